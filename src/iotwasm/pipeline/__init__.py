"""Pipeline layer: routes from sources through deployments to sinks, with store-and-forward."""

from .outbox import Forwarder, Outbox, OutboxFull
from .route import BatchPolicy, QueuePolicy, RouteRunner, RouteStats, Sink, Step
from .sinks import BusSink, LocalStore, LogSink, StoreSink, WebhookSink
from .sources import BusSource, SensorSource
from .templates import TopicPattern, TopicTemplate

__all__ = ["BatchPolicy", "BusSink", "BusSource", "Forwarder", "LocalStore", "LogSink", "Outbox",
           "OutboxFull", "QueuePolicy", "RouteRunner", "RouteStats", "SensorSource", "Sink", "Step",
           "StoreSink", "TopicPattern", "TopicTemplate", "WebhookSink"]
