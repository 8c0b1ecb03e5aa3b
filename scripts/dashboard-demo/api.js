// The screenshot's "api": an HTTP server that does a little work per request and logs now and then.
const http = require('http');
let served = 0;
http.createServer((req, res) => {
  served++;
  let x = 0;
  for (let i = 0; i < 30000 + Math.random() * 60000; i++) x += Math.sqrt(i);
  if (served % 300 === 0) console.log(`GET ${req.url} 200 · ${served} requests served by pid ${process.pid}`);
  if (Math.random() < 0.0006) console.error(`upstream slow: /orders took ${800 + Math.floor(Math.random() * 900)} ms`);
  res.end(`hello from ${process.pid} ${x > 0}\n`);
}).listen(Number(process.env.PORT));
