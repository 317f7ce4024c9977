"""OTLP/gRPC receiver: TraceService, MetricsService and LogsService ``Export`` → the OTLP receiver."""

from __future__ import annotations

import socket
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from agent import otlp_decode as dec
from agent.errors import ObsconformError
from agent.otlp import GRPC, ExportFailed, OtlpReceiver


# Signal → its gRPC service, named from the descriptors opentelemetry-proto ships.
SERVICES = {
    dec.TRACES: trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name,
    dec.METRICS: metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    dec.LOGS: logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name,
}
# Exports handled at once; an SDK sends one batch per signal at a time, so a few suffice.
WORKERS = 8
STOP_GRACE_S = 1.0


class OtlpGrpcReceiver:
    """Serves OTLP/gRPC on ``host:port`` and hands every export to ``sink``.

    The sink (the run's ``OtlpReceiver``) decodes, keeps and writes the records and counts
    the export, exactly as for OTLP/HTTP: one record store, one quiet clock for settling.
    Each request message is bounded by ``max_message_bytes`` (default: the sink's HTTP body
    limit) after gzip inflation: gRPC answers RESOURCE_EXHAUSTED past it. A message that is
    no valid export gets INVALID_ARGUMENT; a failure of ours INTERNAL.
    """

    def __init__(self, sink: OtlpReceiver, host: str = "127.0.0.1", port: int = 0,
                 max_message_bytes: int | None = None) -> None:
        self.max_message_bytes = sink.max_body_bytes if max_message_bytes is None else max_message_bytes
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.sink = sink
        self.host = host
        self._requested_port = port
        self._port = 0
        self._server: grpc.Server | None = None

    def start(self) -> OtlpGrpcReceiver:
        if self._server is not None:
            return self
        server = self._build()
        self._port = self._bind(server)
        server.start()
        self._server = server
        return self

    def _bind(self, server: grpc.Server) -> int:
        """Bind the listening port; an unusable address is a one-line ObsconformError saying why."""
        # gRPC's bind failure gives no reason (and logs to stderr): a plain bind first does.
        cause = _bind_error(self.host, self._requested_port) if self._requested_port else None
        port = 0
        if cause is None:
            try:
                port = server.add_insecure_port(_address(self.host, self._requested_port))
            except RuntimeError:  # grpcio ≥ 1.59 raises where it used to return 0
                port = 0
        if not port:
            server.stop(None)
            why = cause.strerror if cause is not None else "address not available"
            raise ObsconformError(
                f"the otlp-grpc-receiver cannot listen on {self.host}:{self._requested_port} ({why}): "
                "choose another address or port"
            ) from cause
        return port

    def _build(self) -> grpc.Server:
        return grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="otlp-grpc"),
            handlers=[
                grpc.method_handlers_generic_handler(service, {"Export": self._export_handler(signal)})
                for signal, service in SERVICES.items()
            ],
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                # gRPC shares ports by default (SO_REUSEPORT): a busy port would "bind" and
                # split the exports with whoever holds it. Refuse it instead.
                ("grpc.so_reuseport", 0),
            ],
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting exports; those in flight get ``grace_s`` to finish. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace_s).wait(grace_s + 1.0)

    def __enter__(self) -> OtlpGrpcReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        """What a service's ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to (with protocol ``grpc``)."""
        return f"http://{_address(self.host, self._port)}"

    def _export_handler(self, signal: str) -> grpc.RpcMethodHandler:
        # No (de)serializers: the handler gets the raw message bytes, so they take the same
        # protobuf → records path as an OTLP/HTTP body, and a bad one is INVALID_ARGUMENT
        # (a deserializer failing inside grpcio would answer INTERNAL).
        response = dec.response_body(signal, is_json=False)
        sink = self.sink

        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            received_ns = time.time_ns()
            try:
                sink.export(signal, request, received_ns=received_ns, transport=GRPC)
            except dec.OtlpDecodeError as e:  # counted and logged once by the sink
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(e))
            except ExportFailed as e:
                context.abort(grpc.StatusCode.INTERNAL, _details(e))
            return response

        return grpc.unary_unary_rpc_method_handler(export)


def _details(e: Exception) -> str:
    """A status message short enough for a trailer (grpc-message travels as a header)."""
    return str(e)[:1024]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_error(host: str, port: int) -> OSError | None:
    """Why binding ``host:port`` fails (EADDRINUSE, EADDRNOTAVAIL, EACCES), or None if it does not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None
