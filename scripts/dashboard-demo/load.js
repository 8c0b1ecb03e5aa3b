// A bounded load: `node load.js <port> <seconds> <concurrency>`, one connection per request.
const http = require('http');
const [port, seconds, concurrency] = process.argv.slice(2).map(Number);
const end = Date.now() + seconds * 1000;
const agent = new http.Agent({ keepAlive: false, maxSockets: concurrency });
function one() {
  if (Date.now() > end) return;
  http.get({ host: '127.0.0.1', port, path: '/orders', agent, headers: { Connection: 'close' } }, (res) => { res.resume(); res.on('end', one); })
    .on('error', () => setTimeout(one, 50));
}
for (let i = 0; i < concurrency; i++) one();
