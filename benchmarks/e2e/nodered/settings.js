// Node-RED settings for the end-to-end benchmark: headless (no editor, no HTTP nodes), the
// flow file given on the command line, broker and log level from the environment that
// benchmarks/e2e/run.py sets (E2E_BROKER_HOST, E2E_BROKER_PORT, E2E_UI_PORT, E2E_LOG_LEVEL).
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: parseInt(process.env.E2E_UI_PORT || "1880", 10),
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    credentialSecret: false,
    flowFilePretty: true,
    functionExternalModules: false,
    externalModules: {autoInstall: false, palette: {allowInstall: false}, modules: {allowInstall: false}},
    editorTheme: {projects: {enabled: false}},
    diagnostics: {enabled: false, ui: false},
    telemetry: {enabled: false, updateNotification: false},
    logging: {
        console: {level: process.env.E2E_LOG_LEVEL || "info", metrics: false, audit: false},
    },
};
