// A small web app for Skiff: Node.js standard library only, listens on $PORT.
// GET / answers a greeting ($GREETING, default "hello"); every request logs one line.
const http = require('http');

const port = Number(process.env.PORT || 8080);
const greeting = process.env.GREETING || 'hello';
const index = process.env.CF_INSTANCE_INDEX || '0';

const server = http.createServer((req, res) => {
  console.log(`${req.method} ${req.url}`);
  if (req.url === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  res.writeHead(req.url === '/' ? 200 : 404, { 'Content-Type': 'text/plain' });
  res.end(req.url === '/' ? `${greeting} from node instance ${index}\n` : 'not found\n');
});

server.listen(port, () => console.log(`node-web listening on port ${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
