require('http').createServer((req, res) => res.end('hello from ' + process.pid + '\n')).listen(8080)
