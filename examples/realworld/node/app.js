'use strict';
// Express on node:http as people run it: traced by the OpenTelemetry Node SDK loaded with
// `node --require ./otel.js app.js` (the http, express and undici instrumentations), request
// metrics from express-prom-bundle (prom-client) on /metrics, outbound calls with the global
// fetch. Listens on 127.0.0.1, port from --port N or $PORT (default 8003).

const express = require('express');
const promBundle = require('express-prom-bundle');

const ITEMS = { 1: 'apple', 2: 'pear', 42: 'answer' };
const DOWNSTREAM_PATH = '/inventory/reserve';
const DOWNSTREAM_TIMEOUT_MS = 5000;

function listenPort(argv, env) {
  const i = argv.indexOf('--port');
  const raw = i >= 0 ? argv[i + 1] : env.PORT || '8003';
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`port ${JSON.stringify(raw)}: give --port N or PORT=N with 1 <= N <= 65535`);
  }
  return port;
}

function downstreamUrl(path) {
  const base = process.env.OBSCONFORM_DOWNSTREAM_URL || 'http://127.0.0.1:9';
  return base.replace(/\/+$/, '') + path;
}

const app = express();
// The bundle's README set-up: method and path labels (ids in paths become "#val"); it
// counts /healthz too and serves /metrics itself.
app.use(promBundle({ includeMethod: true, includePath: true }));
app.use(express.json());

app.get('/healthz', (req, res) => {
  res.type('text/plain').send('ok');
});

app.get('/hello', (req, res) => {
  res.json({ greeting: 'hello' });
});

app.get('/items/:id', (req, res) => {
  const id = Number(req.params.id);
  if (!Object.hasOwn(ITEMS, id)) {
    res.status(404).json({ error: 'not found' });
    return;
  }
  res.json({ id, name: ITEMS[id] });
});

app.post('/orders', async (req, res) => {
  const order = req.body || {};
  let ok = false;
  try {
    const r = await fetch(downstreamUrl(DOWNSTREAM_PATH), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ item_id: order.item_id }),
      signal: AbortSignal.timeout(DOWNSTREAM_TIMEOUT_MS),
    });
    await r.arrayBuffer(); // read the body: the connection goes back to the pool
    ok = r.ok;
  } catch (err) {
    console.error('downstream call failed:', err.message);
  }
  res.status(ok ? 201 : 502).json({ reserved: ok });
});

const port = listenPort(process.argv.slice(2), process.env);
app.listen(port, '127.0.0.1', (err) => {
  if (err) throw err;
  console.log(`listening on http://127.0.0.1:${port}`);
});
