// A TCP echo server for Node.js, the libuv-based peer in echo-cpu.sh.
//   node echo-node.js [host] [port]
// It is written the way Node code is usually written (stream piping, with
// its own backpressure) rather than tuned, as echo.lua is for weft.
'use strict';
const net = require('net');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 0);

const server = net.createServer((conn) => {
	// A client that resets mid-echo must not take the server down.
	conn.on('error', () => conn.destroy());
	conn.pipe(conn);
});
server.listen(port, host, () => {
	const a = server.address();
	process.stdout.write(`listening on ${a.address}:${a.port}\n`);
});
