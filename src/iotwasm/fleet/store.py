"""The fleet's shared state in JetStream: three KV buckets and an object store.

- ``iotwasm-nodes``: one heartbeat per node; the bucket's max age drops a node that stops.
- ``iotwasm-deployments``: fleet deployments by name, with history; every write is a
  compare-and-set on the revision the writer read, so concurrent writers cannot lose updates.
- ``iotwasm-assignments``: what each node should run, written by the controller.
- ``iotwasm-rollouts``: the staged rollout of each deployment's newest version (fleet/rollout.py).
- ``iotwasm-leader``: leases (key ``controller``): who runs the passes; entries age out.
- ``iotwasm-modules`` (object store): module binaries by digest, plus detached signatures.
- ``iotwasm-devices``: the device twins each node's registry holds (fleet/devices.py), by
  ``<namespace>.<device>``, with the node that wrote it: the fleet-wide view of devices.
- ``iotwasm-audit-anchors``: each node's audit log anchors (api/audit.py), its last 64 kept:
  what `iotwasm audit verify --anchor nats://…` checks a node's log against.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ..engine.module import digest_of
from ..errors import ConfigError, IotwasmError
from ..registry.signing import Signature
from .model import FleetDeployment, NodeInfo
from .rollout import NoRollout, Rollout, control

log = logging.getLogger("iotwasm.fleet")

NODES = "iotwasm-nodes"
DEPLOYMENTS = "iotwasm-deployments"
ASSIGNMENTS = "iotwasm-assignments"
ROLLOUTS = "iotwasm-rollouts"
LEADER = "iotwasm-leader"
MODULES = "iotwasm-modules"
AUDIT_ANCHORS = "iotwasm-audit-anchors"
DEVICES = "iotwasm-devices"
WRONG_LAST_SEQUENCE = 10071     # JetStream's error code for a compare-and-set that lost
KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ConflictError(IotwasmError):
    """A compare-and-set write lost: someone else wrote first; read again and retry."""


class ArtifactError(IotwasmError):
    """A module from the object store is missing, or is not what its digest says."""


def check_key(what: str, key: str) -> str:
    if not KEY.match(key):
        raise ConfigError(f"{what} {key!r}: only letters, digits and - _ = . / are allowed")
    return key


def _entry(e: KeyValue.Entry) -> tuple[bytes, int]:
    """An entry's value and revision (the client types both optional; a read entry has them)."""
    return e.value or b"", e.revision or 0


class FleetStore:
    def __init__(self, nc, node_ttl_s: float):
        self.nc = nc
        self.js = nc.jetstream()
        self.node_ttl_s = node_ttl_s
        self._kv: dict[str, KeyValue] = {}
        self._obj: ObjectStore | None = None

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 5.0, node_ttl_s: float = 4.0,
                      name: str = "iotwasm-fleet") -> "FleetStore":
        """Connect (reconnecting forever afterwards) and make sure the buckets exist."""
        try:
            nc = await nats.connect(url, name=name, connect_timeout=timeout, allow_reconnect=True,
                                    max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                    error_cb=_quiet, disconnected_cb=_quiet_cb, reconnected_cb=_quiet_cb)
        except Exception as e:
            raise IotwasmError(f"fleet {url}: cannot connect: {e or type(e).__name__}") from None
        store = cls(nc, node_ttl_s)
        try:
            await store._buckets()
        except Exception as e:
            await nc.close()
            raise IotwasmError(f"fleet {url}: JetStream not usable (is nats-server run with -js?): "
                               f"{e or type(e).__name__}") from None
        return store

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.nc.close(), 3)
        except Exception as e:   # a close that hangs on a dead link must not hang the caller
            log.warning("fleet link close: %s", e or type(e).__name__)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def _bucket(self, name: str, **cfg):
        try:
            kv = await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            kv = await self.js.create_key_value(bucket=name, storage=StorageType.FILE, **cfg)
        self._kv[name] = kv
        return kv

    @property
    def _objects(self) -> ObjectStore:
        if self._obj is None:
            raise IotwasmError("the fleet store was used before connect() opened its buckets")
        return self._obj

    async def _buckets(self) -> None:
        await self._bucket(NODES, ttl=self.node_ttl_s, history=1)
        await self._bucket(DEPLOYMENTS, history=16)
        await self._bucket(ASSIGNMENTS, history=4)
        await self._bucket(ROLLOUTS, history=4)
        try:
            self._obj = await self.js.object_store(MODULES)
        except nats.js.errors.BucketNotFoundError:
            self._obj = await self.js.create_object_store(MODULES, storage=StorageType.FILE)

    # -- audit anchors ---------------------------------------------------------------------
    async def put_audit_anchor(self, node_id: str, record: dict) -> None:
        """Keep `record` (an audit anchor) as `node_id`'s newest; the bucket keeps 64 per node."""
        kv = self._kv.get(AUDIT_ANCHORS) or await self._bucket(AUDIT_ANCHORS, history=64)
        await kv.put(check_key("node id", node_id), json.dumps(record).encode())

    async def audit_anchors(self, node_id: str) -> list:
        """The anchors of `node_id` the bucket still holds, oldest first (raw JSON values:
        the reader checks them)."""
        try:
            kv = self._kv.get(AUDIT_ANCHORS) or await self.js.key_value(AUDIT_ANCHORS)
            entries = await kv.history(check_key("node id", node_id))
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
            return []
        out = []
        for e in entries:
            if e.value:
                try:
                    out.append(json.loads(e.value))
                except ValueError:
                    out.append(None)   # not JSON: the reader says the anchor is damaged
        return out

    # -- devices ---------------------------------------------------------------------------
    async def put_twin(self, key: str, doc: dict) -> None:
        """A node's copy of one device twin (fleet/devices.py), the newest only."""
        kv = self._kv.get(DEVICES) or await self._bucket(DEVICES, history=1)
        await kv.put(check_key("device key", key), json.dumps(doc).encode())

    async def twins(self, limit: int) -> list[dict]:
        """Up to `limit` device twins of the fleet, by key."""
        try:
            kv = self._kv.get(DEVICES) or await self.js.key_value(DEVICES)
            self._kv[DEVICES] = kv
            keys = sorted(await self._keys(DEVICES))[:limit]
        except nats.js.errors.BucketNotFoundError:
            return []

        async def one(key: str):
            try:
                return await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None

        out = []
        for e in await asyncio.gather(*(one(k) for k in keys)):
            if e is not None and e.value:
                try:
                    out.append(json.loads(e.value))
                except ValueError:
                    continue   # not a twin written by a node: not shown
        return out

    # -- leases ----------------------------------------------------------------------------
    async def lease_bucket(self, ttl_s: float):
        """The leader bucket, created with max age `ttl_s` when missing, and the max age it
        really has: the first creator's wins, and holders must renew within that one."""
        kv = self._kv.get(LEADER) or await self._bucket(LEADER, ttl=ttl_s, history=1)
        return kv, (await kv.status()).ttl or ttl_s

    async def lease_holder(self, key: str = "controller") -> tuple[dict, int] | None:
        """(holder, revision) of a lease, or None when nobody holds it; reads only, so that
        looking does not create the bucket."""
        try:
            kv = self._kv.get(LEADER) or await self.js.key_value(LEADER)
            e = await kv.get(key)
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            return None
        value, revision = _entry(e)
        try:
            return json.loads(value), revision
        except ValueError:
            return {"id": value.decode(errors="replace")}, revision

    # -- nodes -----------------------------------------------------------------------------
    async def heartbeat(self, info: NodeInfo) -> int:
        return await self._kv[NODES].put(check_key("node id", info.id), info.to_json())

    async def leave(self, node_id: str) -> None:
        await self._kv[NODES].delete(node_id)

    async def nodes(self) -> dict[str, tuple[NodeInfo, int]]:
        """Node id → (last heartbeat, its revision); nodes whose heartbeat aged out are gone."""
        async def one(key: str):
            try:
                return await self._kv[NODES].get(key)
            except nats.js.errors.KeyNotFoundError:
                return None   # aged out between listing and reading

        keys = await self._keys(NODES)
        entries = await asyncio.gather(*(one(k) for k in keys))   # concurrent requests, one round trip
        return {k: (NodeInfo.from_json(e.value), e.revision) for k, e in zip(keys, entries) if e is not None}

    async def _keys(self, bucket: str) -> list[str]:
        """The bucket's keys (a deleted one may be among them: reading it finds nothing), from
        the stream's own count of its subjects — one request and a consistent snapshot. Listing
        through a watcher, as nats-py's `keys()` does, can end before a key whose value was
        replaced while it ran: a node heartbeating at that moment went missing from a listing."""
        prefix = f"$KV.{bucket}."
        info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=prefix + ">")
        return [s[len(prefix):] for s in (info.state.subjects or {})]

    # -- desired state ---------------------------------------------------------------------
    async def deployment(self, name: str) -> tuple[FleetDeployment, int] | None:
        try:
            e = await self._kv[DEPLOYMENTS].get(check_key("deployment", name))
        except nats.js.errors.KeyNotFoundError:
            return None
        value, revision = _entry(e)
        return FleetDeployment.parse(value, f"fleet deployment {name}"), revision

    async def deployments(self) -> dict[str, tuple[FleetDeployment, int]]:
        keys = await self._keys(DEPLOYMENTS)
        out = {}
        for key, got in zip(keys, await asyncio.gather(*(self.deployment(k) for k in keys),
                                                        return_exceptions=True)):
            if isinstance(got, ConfigError):
                log.error("%s", got)  # one bad entry must not stop the others from being placed
            elif isinstance(got, BaseException):
                raise got
            elif got is not None:
                out[key] = got
        return out

    async def put_deployment(self, fd: FleetDeployment, revision: int | None) -> int:
        """Write `fd` if the stored revision is still `revision` (None or 0: must not exist
        yet); raise ConflictError otherwise. Returns the new revision."""
        return await self._cas(DEPLOYMENTS, check_key("deployment", fd.name), fd.to_json(), revision,
                               f"fleet deployment {fd.name}")

    async def _cas(self, bucket: str, key: str, body: bytes, revision: int | None, what: str) -> int:
        """Compare-and-set: write `body` if the key is still at `revision` (None or 0: must not
        exist yet), else raise ConflictError. Returns the new revision."""
        kv = self._kv[bucket]
        try:
            if not revision:
                return await kv.create(key, body)
            return await kv.update(key, body, last=revision)
        except nats.js.errors.APIError as e:
            if _lost(e):
                raise ConflictError(f"{what}: changed since revision {revision or 'none'}; "
                                    "read it again and retry") from None
            raise

    async def delete_deployment(self, name: str, revision: int | None = None) -> None:
        try:
            await self._kv[DEPLOYMENTS].delete(check_key("deployment", name), last=revision)
        except nats.js.errors.APIError as e:
            if _lost(e):
                raise ConflictError(f"fleet deployment {name}: changed since revision {revision}; "
                                    "read it again and retry") from None
            raise

    # -- assignments -----------------------------------------------------------------------
    async def assignment(self, node_id: str) -> tuple[dict, int]:
        """(assignment, revision); an unknown node has the empty assignment at revision 0."""
        try:
            e = await self._kv[ASSIGNMENTS].get(check_key("node id", node_id))
        except nats.js.errors.KeyNotFoundError:
            return {"deployments": {}}, 0
        value, revision = _entry(e)
        return json.loads(value), revision

    async def assignments(self) -> dict[str, tuple[dict, int]]:
        keys = await self._keys(ASSIGNMENTS)
        got = await asyncio.gather(*(self.assignment(k) for k in keys))
        return {k: a for k, a in zip(keys, got) if a[1]}     # revision 0: deleted, nothing assigned

    async def put_assignment(self, node_id: str, assignment: dict, revision: int) -> int:
        return await self._cas(ASSIGNMENTS, check_key("node id", node_id),
                               json.dumps(assignment, sort_keys=True).encode(), revision, f"assignment of {node_id}")

    # -- rollouts --------------------------------------------------------------------------
    async def rollout(self, name: str) -> tuple[Rollout, int] | None:
        try:
            e = await self._kv[ROLLOUTS].get(check_key("deployment", name))
        except nats.js.errors.KeyNotFoundError:
            return None
        value, revision = _entry(e)
        return Rollout.from_json(value), revision

    async def rollouts(self) -> dict[str, tuple[Rollout, int]]:
        keys = await self._keys(ROLLOUTS)
        got = await asyncio.gather(*(self.rollout(k) for k in keys))
        return {k: g for k, g in zip(keys, got) if g is not None}

    async def put_rollout(self, r: Rollout, revision: int) -> int:
        """Write the record if it is still at `revision` (0: must not exist); ConflictError if not."""
        return await self._cas(ROLLOUTS, check_key("deployment", r.deployment), r.to_json(), revision,
                               f"rollout of {r.deployment}")

    async def delete_rollout(self, name: str) -> None:
        await self._kv[ROLLOUTS].delete(check_key("deployment", name))

    async def control_rollout(self, name: str, action: str, who: str = "an operator") -> Rollout:
        """Pause, resume or abort the rollout of `name`, retrying when the controller wrote the
        record in between."""
        for _ in range(10):
            got = await self.rollout(name)
            if got is None:
                raise NoRollout(f"fleet deployment {name}: no rollout recorded")
            r, rev = got
            control(r, action, who=who)      # RolloutStateError when the action does not apply
            try:
                await self.put_rollout(r, rev)
                return r
            except ConflictError:
                await asyncio.sleep(0.05)
        raise IotwasmError(f"rollout of {name}: the record kept changing; try again")

    async def watch_bucket(self, bucket: str):
        """A watcher over every key of `bucket`: current values first, then each change."""
        return await self._kv[bucket].watchall()

    async def follow_assignment(self, node_id: str, written):
        """A subscription that calls `written(msg)` on every write to the node's assignment
        key (puts, deletes, purges: the key-value store's subject for it); read the key for
        what it holds."""
        return await self.nc.subscribe(f"$KV.{ASSIGNMENTS}.{check_key('node id', node_id)}", cb=written)

    # -- artifacts -------------------------------------------------------------------------
    @staticmethod
    def _object(digest: str) -> str:
        if not DIGEST.match(digest):
            raise ArtifactError(f"module reference {digest!r} is not a sha256:<64 hex> digest; fleet "
                                "deployments name modules by digest")
        return digest.replace(":", "-")

    async def put_module(self, wasm: bytes) -> str:
        """Store a module binary under its digest; returns the digest."""
        digest = digest_of(wasm)
        await self._objects.put(self._object(digest), bytes(wasm))
        return digest

    async def put_object(self, digest: str, data: bytes) -> None:
        """Store raw bytes under a digest name without checking them (for tools and tests
        that need to show what a node does with a corrupt artifact)."""
        await self._objects.put(self._object(digest), bytes(data))

    async def fetch_module(self, digest: str) -> bytes:
        """The module with `digest`, checked: bytes that hash differently are refused."""
        name = self._object(digest)
        try:
            result = await self._objects.get(name)
        except nats.js.errors.ObjectNotFoundError:
            raise ArtifactError(f"module {digest}: not in the fleet object store {MODULES}") from None
        except Exception as e:
            raise ArtifactError(f"module {digest}: fetching from {MODULES} failed: {e or type(e).__name__}") from None
        data = result.data or b""
        actual = digest_of(data)
        if actual != digest:
            raise ArtifactError(f"module {digest} refused: the object store copy hashes to {actual} "
                                "(corrupt or tampered artifact); nothing was loaded")
        return data

    async def put_signature(self, sig: Signature) -> None:
        sigs = [s for s in await self.signatures(sig.digest) if s.key_id != sig.key_id] + [sig]
        await self._objects.put(self._object(sig.digest) + ".sig",
                            json.dumps([json.loads(s.to_json()) for s in sigs]).encode())

    async def signatures(self, digest: str) -> list[Signature]:
        try:
            result = await self._objects.get(self._object(digest) + ".sig")
        except nats.js.errors.ObjectNotFoundError:
            return []
        try:
            return [Signature.from_json(json.dumps(s), f"signature of {digest}") for s in json.loads(result.data or b"")]
        except (ValueError, TypeError, IotwasmError) as e:
            raise ArtifactError(f"signatures of {digest} unreadable: {e}") from None


def _lost(e: Exception) -> bool:
    """Whether a compare-and-set lost: nats-py raises KeyWrongLastSequenceError for a stale
    update, but a stale delete comes back as a plain bad request carrying the same JetStream
    error code."""
    return isinstance(e, nats.js.errors.KeyWrongLastSequenceError) or \
        getattr(e, "err_code", None) == WRONG_LAST_SEQUENCE


async def _quiet(e: Exception) -> None:
    log.debug("fleet link: %s", e)


async def _quiet_cb() -> None:
    return None
