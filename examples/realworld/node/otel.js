'use strict';
// The OpenTelemetry Node SDK set-up, loaded before the app: `node --require ./otel.js app.js`.
//
// Everything comes from the standard OTEL_* environment, as the sdk-node docs say (a NodeSDK
// given no exporter reads OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER, OTEL_LOGS_EXPORTER,
// OTEL_EXPORTER_OTLP_*, OTEL_BSP_*, OTEL_PROPAGATORS, OTEL_SERVICE_NAME ...), with the
// auto-instrumentations' defaults (http, express, undici for global fetch, ...).
//
// REALWORLD_FAULT=drop-spans:N drops every Nth SERVER span of the load driver's GET
// /items/... requests before it reaches the batch processor (a SpanProcessor wrapper: the
// spans a lossy pipeline loses) and writes {"dropped_server_spans": n} to
// $REALWORLD_COUNTS_FILE at each drop. Only /items/... and only the driver's (its
// User-Agent): obsconform's trace-context and bizCode phases never request it, so the loss
// is the load phase's alone, as in the Python services (examples/realworld/otelsetup.py).
//
// On SIGTERM (how obsconform stops an --exec service) the SDK is shut down, which exports
// the spans and metrics still buffered, before the process exits: Node's default SIGTERM
// action would end it at once and lose them.

const fs = require('node:fs');
const path = require('node:path');
const { SpanKind } = require('@opentelemetry/api');
const { getNodeAutoInstrumentations } = require('@opentelemetry/auto-instrumentations-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { NodeSDK } = require('@opentelemetry/sdk-node');
const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');

const SHUTDOWN_TIMEOUT_MS = 5000; // obsconform SIGKILLs 10 s after SIGTERM
const DRIVER_USER_AGENT = 'obsconform-driver'; // agent.evidence.DRIVER_USER_AGENT
const DROP_PATH_PREFIX = '/items/';

/** A SERVER span of the driver's GET /items/... request (stable or pre-1.21 names). */
function droppable(span) {
  if (span.kind !== SpanKind.SERVER) return false;
  const a = span.attributes || {};
  const ua = String(a['user_agent.original'] ?? a['http.user_agent'] ?? '');
  const method = a['http.request.method'] ?? a['http.method'];
  const target = String(a['url.path'] ?? a['http.target'] ?? '').split('?')[0];
  return ua.startsWith(DRIVER_USER_AGENT) && method === 'GET' && target.startsWith(DROP_PATH_PREFIX);
}

/** Passes every span on to `inner` except every `n`th droppable one, which it counts. */
class DropEveryNthServerSpan {
  constructor(inner, n, countsFile) {
    this.inner = inner;
    this.n = n;
    this.countsFile = countsFile;
    this.seen = 0;
    this.dropped = 0;
  }

  onStart(span, parentContext) {
    this.inner.onStart(span, parentContext);
  }

  onEnd(span) {
    if (droppable(span) && ++this.seen % this.n === 0) {
      this.dropped += 1;
      this.writeCounts(); // now, not only at exit: a killed process still tells
      return;
    }
    this.inner.onEnd(span);
  }

  forceFlush() {
    return this.inner.forceFlush();
  }

  shutdown() {
    return this.inner.shutdown();
  }

  writeCounts() {
    if (!this.countsFile) return;
    const file = this.countsFile;
    const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
    fs.writeFileSync(tmp, JSON.stringify({ dropped_server_spans: this.dropped }));
    fs.renameSync(tmp, file); // atomic: a reader never sees half a file
  }
}

function envNumber(name) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const value = Number(raw);
  return Number.isFinite(value) && value >= 0 ? value : undefined; // the SDK ignores bad values too
}

/** The fault named by REALWORLD_FAULT, or null; a value this service does not know throws. */
function parseFault(raw) {
  if (!raw) return null;
  const [kind, arg] = raw.split(':');
  const n = Number(arg);
  if (kind !== 'drop-spans' || !Number.isInteger(n) || n < 1) {
    throw new Error(`REALWORLD_FAULT=${raw}: this service knows only drop-spans:N (N >= 1)`);
  }
  return { kind, n };
}

const fault = parseFault(process.env.REALWORLD_FAULT);
const config = { instrumentations: [getNodeAutoInstrumentations()] };
let dropper = null;
if (fault) {
  // Given span processors, the SDK no longer builds its own from the environment: build the
  // same one it would (OTLP/HTTP protobuf exporter, batch settings from OTEL_BSP_*).
  dropper = new DropEveryNthServerSpan(
    new BatchSpanProcessor(new OTLPTraceExporter(), {
      maxQueueSize: envNumber('OTEL_BSP_MAX_QUEUE_SIZE'),
      scheduledDelayMillis: envNumber('OTEL_BSP_SCHEDULE_DELAY'),
      exportTimeoutMillis: envNumber('OTEL_BSP_EXPORT_TIMEOUT'),
      maxExportBatchSize: envNumber('OTEL_BSP_MAX_EXPORT_BATCH_SIZE'),
    }),
    fault.n,
    process.env.REALWORLD_COUNTS_FILE,
  );
  config.spanProcessors = [dropper];
}

const sdk = new NodeSDK(config);
sdk.start();

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  const timeout = new Promise((resolve) => setTimeout(resolve, SHUTDOWN_TIMEOUT_MS).unref());
  Promise.race([sdk.shutdown(), timeout])
    .catch((err) => console.error('OpenTelemetry SDK shutdown failed:', err))
    .finally(() => {
      if (dropper) dropper.writeCounts(); // also when nothing was dropped: 0, not no file
      process.exit(0);
    });
});
