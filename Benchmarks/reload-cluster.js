// The comparison for Benchmarks/reload.sh: Node's cluster module around the same app, with the
// reload PM2 does for a cluster app (`pm2 reload`) without a graceful shutdown in the app:
// on SIGUSR2, for each worker in turn, fork a replacement and, as soon as it is 'listening',
// SIGINT the old one (Node's default SIGINT handler exits at once: no draining).
//
//   WORKERS=4 PORT=18090 APP=/path/app.js node reload-cluster.js
//
// Prints one line per finished reload on stdout: "reload <ms> ms".
'use strict';
const cluster = require('cluster');

cluster.schedulingPolicy = cluster.SCHED_RR; // Node's default on Linux; stated for clarity

if (!cluster.isPrimary) {
  require(process.env.APP);
  return;
}

const count = Number(process.env.WORKERS || 4);
for (let i = 0; i < count; i++) cluster.fork();

let reloading = false;
let again = false;

function replace(queue, started) {
  const old = queue.shift();
  if (!old) {
    reloading = false;
    console.log(`reload ${Date.now() - started} ms`);
    if (again) { again = false; reload(); }
    return;
  }
  const fresh = cluster.fork();
  const onExit = () => { console.error(`reload: replacement ${fresh.process.pid} died before listening`); reloading = false; };
  fresh.once('exit', onExit);
  fresh.once('listening', () => {
    fresh.removeListener('exit', onExit);
    // Like PM2 without a graceful handler in the app: the old process is signalled right away.
    try { old.process.kill('SIGINT'); } catch (_) { /* already gone */ }
    replace(queue, started);
  });
}

function reload() {
  if (reloading) { again = true; return; }
  reloading = true;
  replace(Object.values(cluster.workers).filter((w) => !w.isDead()), Date.now());
}

process.on('SIGUSR2', reload);
process.on('SIGTERM', () => {
  for (const w of Object.values(cluster.workers)) w.process.kill('SIGKILL');
  process.exit(0);
});
