'use strict';
// pml's Node.js shim for cluster mode (dispatch = "rr", "least-busy", "reuseport").
//
// The daemon loads it into every Node worker of such an app with
// NODE_OPTIONS=--require <this file>. It makes an unchanged `server.listen(8080)` ask pml for
// the address over the IPC channel instead of binding it, and turns the connections pml hands
// over (NODE_HANDLE lines carrying the accepted fd) into the server's own 'connection' events.
// Under reuseport, `server.listen(8080)` listens on this worker's own SO_REUSEPORT socket for
// 8080, inherited from pml (LISTEN_FDS, PML_LISTEN_ADDRESSES), and still takes the connections
// pml hands over (those queued on the socket of a worker that died). Under least-busy it tells
// pml how many connections it has closed in all whenever one closes ({type:"pml:load", closed}).
// On pml's "shutdown" message (when the app has no 'message' listener of its own) it closes
// every such server and exits once their connections are done: an unchanged app stops without
// dropping in-flight requests.
//
// Wire format (see docs/PROTOCOL.md and PRODUCT.md §5):
//   worker -> pml  {type:"pml:listen", id, port, host, path, inherited?}
//                  {type:"pml:unlisten", port, host, path, address}
//                  {type:"pml:load", closed}   (least-busy: connections closed in all, after a change)
//   pml -> worker  {cmd:"NODE_PML_LISTEN_REPLY", id, ok, port, address | error, code}
//                  {cmd:"NODE_HANDLE", type:"net.Socket", msg:{type:"pml:connection", port, address}} + fd
//                  "shutdown"
// rr and least-busy also give the worker pml's native handoff channel (PML_HANDOFF_FD, a unix
// stream socket): the shim opts in with "H 1 <window> 2\n" and then gets each connection as
// "<address>\n" + one fd per message, and credits each message back ("C <n>\n", one line for at
// least 4 read, or within 2 ms) instead of a JSON message and an ACK per connection. The "2" (said
// only if PML_HANDOFF_REVISION says pml speaks it): after a daemon death, the successor's first
// message is "E <epoch> <address>\n"; the shim writes the credits for what it read before, then
// "E <epoch>\n" (the successor ignores credits until then).
// Plain CommonJS, no dependencies, Node 18+. Inert unless started by pml (PML_APP and an IPC channel).

(function pmlShim() {
  const env = process.env;
  if (!env.PML_APP) return;

  // Only the process pml spawned talks to pml. Its children (child_process.fork, Node cluster
  // workers, the app behind `npm start`) inherit NODE_OPTIONS and PML_* but their channel, if
  // any, leads to their parent, not to pml: they must bind for real. Node deletes
  // NODE_CHANNEL_FD and NODE_UNIQUE_ID before preloads run, so we mark the env ourselves.
  const mark = env.PML_NODE_SHIM_PID;
  if (mark && mark !== String(process.pid)) return;
  env.PML_NODE_SHIM_PID = String(process.pid);

  if (typeof process.send !== 'function') return;

  const net = require('net');
  const path = require('path');
  const os = require('os');

  const kState = Symbol('pml.server');
  const kTracked = Symbol('pml.tracked');
  const origListen = net.Server.prototype.listen;
  const origClose = net.Server.prototype.close;
  const origEmit = process.emit;

  const servers = new Set();        // shim servers: pending, listening or closing
  const routes = new Map();         // address key ("8080", "unix:/p") -> listening server
  const draining = new Map();       // address key -> Set of closing servers (for late handles)
  const pendingReplies = new Map(); // listen request id -> function(reply)
  let nextId = 1;
  let shuttingDown = false;
  let channelHeld = false;
  let releaseTimer = null;

  // reuseport: this worker's slot sockets, fd 3 onwards, one per app address (in order).
  const reusePort = env.PML_DISPATCH === 'reuseport';
  const inherited = [];
  if (env.PML_LISTEN_ADDRESSES && env.LISTEN_PID === String(process.pid)) {
    const keys = env.PML_LISTEN_ADDRESSES.split(',');
    if (Number(env.LISTEN_FDS) === keys.length) {
      keys.forEach((key, i) => inherited.push({ key, fd: 3 + i, used: false }));
    }
  }
  for (const k of ['LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES', 'PML_LISTEN_ADDRESSES']) delete env[k];

  // least-busy: how many connections of shim servers have closed in all, reported to pml after
  // a change, at most once per turn of the event loop. A count that only grows lets pml tell
  // exactly which of the connections it handed over are still open (handed - closed).
  const reportLoad = env.PML_DISPATCH === 'least-busy';
  let closedConnections = 0;
  let loadReportQueued = false;
  function connectionClosed() {
    closedConnections++;
    if (!reportLoad || loadReportQueued) return;
    loadReportQueued = true;
    setImmediate(() => {
      loadReportQueued = false;
      if (process.connected) process.send({ type: 'pml:load', closed: closedConnections });
    });
  }

  // -- The native handoff channel ------------------------------------------------------------

  // Node's own IPC pipe (process.binding('pipe_wrap'), IPC mode) reads one message per callback
  // and exposes its fd as pendingHandle: one fd per message, as the hello says. Anything missing
  // (another Node) leaves it unused, and pml keeps using NODE_HANDLE.
  const handoffWindow = 16;
  let handoff = null;
  // Opened once at most: once the channel is closed (EOF), its fd number may be one of the app's
  // own files, and opening it again would write a hello into that file.
  let handoffTried = false;
  let credits = 0;
  let creditQueued = false;
  function newlines(bytes) {
    let count = 0;
    for (let i = 0; i < bytes.length; i++) if (bytes[i] === 10) count++;
    return count;
  }
  const handoffFD = Number(env.PML_HANDOFF_FD);
  // Revision 2 (marks echoed) only to a daemon that says it speaks it.
  const handoffRevision = Number(env.PML_HANDOFF_REVISION) >= 2 ? ' 2' : '';
  delete env.PML_HANDOFF_FD;
  delete env.PML_HANDOFF_REVISION;
  // Credits go back a quarter of the window at a time, the rest within 2 ms: each line costs pml a
  // read of its own (a line per connection, otherwise, under load), and pml needs them only once
  // half the window is in flight.
  const creditBatch = handoffWindow / 4;
  let creditTimer = null;
  function flushCredits() {
    if (handoff && credits > 0) { handoff.write('C ' + credits + '\n'); credits = 0; }
  }
  function endOfTurn() {
    creditQueued = false;
    if (credits >= creditBatch) return flushCredits();
    if (credits === 0) return;
    // One timer, re-armed: at most creditBatch - 1 turns push it back before a batch is full.
    if (creditTimer) creditTimer.refresh();
    else { creditTimer = setTimeout(flushCredits, 2); creditTimer.unref(); }
  }
  function openHandoff() {
    if (handoffTried || !(handoffFD > 2)) return;
    handoffTried = true;
    try {
      // process.binding is deprecated (DEP0111): silenced here so --pending-deprecation apps see no warning.
      const quiet = process.noDeprecation;
      process.noDeprecation = true;
      let bindings;
      try { bindings = [process.binding('pipe_wrap'), process.binding('stream_wrap')]; } finally { process.noDeprecation = quiet; }
      const [{ Pipe, constants }, { streamBaseState, kReadBytesOrError, WriteWrap }] = bindings;
      const pipe = new Pipe(constants.IPC);
      if (pipe.open(handoffFD) !== 0) return;
      const write = (text) => {
        const req = new WriteWrap();
        req.handle = pipe;
        req.oncomplete = () => {};
        req.async = false;
        pipe.writeLatin1String(req, text);
      };
      pipe.onread = (buf) => {
        const nread = streamBaseState[kReadBytesOrError];
        const h = pipe.pendingHandle;
        pipe.pendingHandle = null;
        if (nread < 0) { pipe.readStop(); pipe.close(); handoff = null; return; }
        // Every message is credited, its fd arrived or not (EMFILE: MSG_CTRUNC, no handle): a
        // credit never given back would shrink the window for good. Counted at the end of this
        // event-loop turn (setImmediate), written in batches (endOfTurn). If this process dies,
        // pml takes back from the channel only what it never read, whatever was credited (it
        // holds a reclaim end for every worker it started; only workers adopted from an older
        // pml, which run that pml's preload, are served from copies kept until credited).
        const bytes = Buffer.from(buf, 0, nread);
        let start = 0;
        if (bytes[0] === 69 && bytes[1] === 32) { // "E ": a successor daemon's mark
          start = bytes.indexOf(32, 2) + 1;
          if (credits > 0) { write('C ' + credits + '\n'); credits = 0; }
          write('E ' + bytes.latin1Slice(2, start - 1) + '\n');
        }
        credits += newlines(bytes);
        if (!creditQueued) { creditQueued = true; setImmediate(endOfTurn); }
        if (!h) return;
        const key = bytes.latin1Slice(start, nread).trimEnd();
        const socket = new net.Socket({ handle: h, readable: true, writable: true });
        const server = routeFor({ address: key });
        if (server) deliver(server, socket); else socket.destroy();
      };
      pipe.readStart();
      pipe.unref(); // the IPC channel keeps the process alive while servers listen
      handoff = { pipe, write };
      write('H 1 ' + handoffWindow + handoffRevision + '\n');
    } catch (_) {
      handoff = null;
    }
  }

  // -- The IPC channel ----------------------------------------------------------------------

  // Node queues 'message' events (connections included) while the process has no 'message'
  // listener, and emits them only once one is added. So while a shim server exists we keep a
  // listener of our own. It also refs the channel, which keeps the process alive the way a
  // listening socket would. Both are dropped a little after the last shim server is gone, so a
  // program that closes its servers can still end on its own; the delay lets connections that
  // pml handed over before it read our unlisten arrive and be served.
  function onChannelMessage() {}
  function onChannelDisconnect() {
    // pml is gone: no new connections can come. Like a Node cluster worker whose primary
    // died, finish what is in flight and exit, unless the app watches 'disconnect' itself.
    if (userListeners('disconnect') > 0) return;
    shutdown(10000);
  }
  function holdChannel() {
    if (releaseTimer) { clearTimeout(releaseTimer); releaseTimer = null; }
    if (channelHeld) return;
    channelHeld = true;
    openHandoff();
    process.on('message', onChannelMessage);
    process.on('disconnect', onChannelDisconnect);
  }
  function releaseChannelSoon() {
    if (!channelHeld || servers.size > 0 || shuttingDown || releaseTimer) return;
    releaseTimer = setTimeout(() => {
      releaseTimer = null;
      if (servers.size > 0 || shuttingDown) return;
      channelHeld = false;
      process.removeListener('message', onChannelMessage);
      process.removeListener('disconnect', onChannelDisconnect);
    }, 2000);
    releaseTimer.unref();
  }
  function userListeners(event) {
    const own = event === 'message' ? onChannelMessage : onChannelDisconnect;
    return process.listeners(event).filter((l) => l !== own && l.listener !== own).length;
  }

  function send(message, onError) {
    if (!process.connected) {
      if (onError) process.nextTick(onError, Object.assign(new Error('pml: IPC channel closed'), { code: 'ERR_IPC_CHANNEL_CLOSED' }));
      return;
    }
    process.send(message, (err) => { if (err && onError) onError(err); });
  }

  process.on('internalMessage', (m) => {
    if (!m || m.cmd !== 'NODE_PML_LISTEN_REPLY') return;
    const resolve = pendingReplies.get(m.id);
    if (!resolve) return;
    pendingReplies.delete(m.id);
    resolve(m);
  });

  // Handed-over connections and the graceful-stop message, before user listeners see them.
  process.emit = function pmlEmit(event, message, handle) {
    if (event === 'message') {
      if (message && typeof message === 'object' && message.type === 'pml:connection' &&
          handle && typeof handle.destroy === 'function') {
        const server = routeFor(message);
        if (server) { deliver(server, handle); return true; }
        if (userListeners('message') === 0) { handle.destroy(); return true; } // nobody to serve it
        // else: the app takes raw sockets itself: process.on('message', (m, socket) => ...)
      } else if (message === 'shutdown' || (message && typeof message === 'object' && message.type === 'shutdown')) {
        if (userListeners('message') === 0) shutdown(0); // the app does not handle it: we do
      }
    }
    return origEmit.apply(this, arguments);
  };

  // -- Addresses ------------------------------------------------------------------------------

  // The key pml uses in replies and connection messages: "8080", "127.0.0.1:8080",
  // "[::1]:8080", "unix:/path".
  function routeFor(message) {
    const key = typeof message.address === 'string' ? message.address : null;
    let server = (key && routes.get(key)) || null;
    if (!server && key && draining.has(key)) server = first(draining.get(key));
    if (!server && typeof message.port === 'number') {
      // Fall back to the port, if exactly one of our servers serves it.
      const matches = [...routes.values()].filter((s) => s[kState].port === message.port);
      if (matches.length === 1) server = matches[0];
    }
    return server;
  }
  function first(set) { for (const x of set) return x; return null; }

  function parseAddress(key) {
    if (typeof key !== 'string') return null;
    if (key.startsWith('unix:')) return { path: key.slice(5) };
    let m = /^\[(.*)\]:(\d+)$/.exec(key);
    if (m) return { host: m[1], port: Number(m[2]) };
    m = /^(.*):(\d+)$/.exec(key);
    if (m) return { host: m[1], port: Number(m[2]) };
    if (/^\d+$/.test(key)) return { host: null, port: Number(key) };
    return null;
  }

  // -- listen -------------------------------------------------------------------------------

  function toNumber(x) { return (x = Number(x)) >= 0 ? x : false; }
  function isPipeName(s) { return typeof s === 'string' && toNumber(s) === false; }

  // True when this listen is Node's own cluster primary binding for its workers
  // (RoundRobinHandle), which must bind for real.
  function isClusterPrimaryInternal() {
    const cluster = require('cluster');
    return cluster.isPrimary && cluster.workers && Object.keys(cluster.workers).length > 0;
  }

  net.Server.prototype.listen = function pmlListen(...args) {
    if (this._handle) return origListen.apply(this, args); // Node throws ERR_SERVER_ALREADY_LISTEN
    if (this[kState]) {
      throw Object.assign(new Error('Listen method has been called more than once without closing.'),
        { code: 'ERR_SERVER_ALREADY_LISTEN' });
    }
    const normalized = net._normalizeArgs(args);
    let options = normalized[0];
    const cb = normalized[1];
    options = options._handle || options.handle || options;

    // Handles and fds, and `exclusive` (Node cluster's "bind it yourself"): not ours.
    if (typeof options !== 'object' || options === null || options instanceof net.Server ||
        typeof options.fd === 'number' || options.exclusive === true ||
        (typeof options.getsockname === 'function') || shuttingDown || isClusterPrimaryInternal()) {
      return origListen.apply(this, args);
    }

    let request;
    if (args.length === 0 || typeof args[0] === 'function' ||
        (typeof options.port === 'undefined' && 'port' in options) || options.port === null) {
      request = { port: 0, host: options.host || null, path: null };
    } else if (typeof options.port === 'number' || typeof options.port === 'string') {
      const port = toNumber(options.port);
      if (port === false || port > 65535 || (typeof options.port === 'string' && options.port.trim() === '') ||
          !Number.isInteger(port)) {
        return origListen.apply(this, args); // Node throws ERR_SOCKET_BAD_PORT
      }
      request = { port, host: options.host || null, path: null };
    } else if (options.path && isPipeName(options.path)) {
      const p = options.path;
      // pml binds it, from its own working directory: send an absolute path.
      const abs = p.startsWith('\0') || p.startsWith('@') ? p : path.resolve(p);
      request = { port: null, host: null, path: abs };
      this._pipeName = p;
    } else {
      return origListen.apply(this, args); // Node throws the right ERR_INVALID_ARG_VALUE
    }

    const slot = request.path == null ? inheritedFor(request) : null;
    // reuseport: pml holds sockets for the app's own addresses only; anything else binds for real.
    if (!slot && reusePort) return origListen.apply(this, args);
    if (cb !== null) this.once('listening', cb);
    const st = {
      phase: slot ? 'listening' : 'pending', key: slot ? slot.key : null, port: null, host: null, family: null,
      request, sockets: new Set(),
    };
    this[kState] = st;
    servers.add(this);
    holdChannel();
    track(this);
    addAbortSignal(this, options.signal);
    if (slot) return listenInherited(this, st, slot);

    const id = nextId++;
    st.id = id;
    const server = this;
    const slow = setTimeout(() => {
      process.emitWarning(`no answer from pml yet for listen ${describe(request)} (is the app's dispatch "rr"?)`,
        { code: 'PML_LISTEN_PENDING' });
    }, 10000);
    slow.unref();
    pendingReplies.set(id, (reply) => { clearTimeout(slow); onListenReply(server, st, reply); });
    send({ type: 'pml:listen', id, port: request.port, host: request.host, path: request.path }, (err) => {
      if (!pendingReplies.has(id)) return;
      pendingReplies.delete(id);
      clearTimeout(slow);
      onListenReply(server, st, { ok: false, code: err.code || 'EPIPE', error: err.message });
    });
    return this;
  };

  // The unused inherited slot socket for a TCP listen: same port, and any host on either side
  // (like rr: listen(port) on every interface takes the app's address for that port).
  function inheritedFor(request) {
    for (const slot of inherited) {
      if (slot.used) continue;
      const a = parseAddress(slot.key);
      if (!a || a.port !== request.port) continue;
      const anyHost = !request.host || request.host === '::' || request.host === '0.0.0.0';
      if (anyHost || !a.host || a.host === request.host) return slot;
    }
    return null;
  }

  // Node listens on the inherited socket itself; pml hears that this worker serves its slot and
  // can take the connections pml accepts for the others' slots while they have no worker.
  function listenInherited(server, st, slot) {
    slot.used = true;
    routes.set(st.key, server);
    const id = nextId++;
    pendingReplies.set(id, (reply) => {
      if (!reply.ok) process.emitWarning(`pml: ${reply.error || reply.code}`, { code: 'PML_LISTEN' });
    });
    server.once('listening', () => {
      send({ type: 'pml:listen', id, port: st.request.port, host: st.request.host, path: null, inherited: true });
    });
    return origListen.call(server, { fd: slot.fd });
  }

  // The sockets of an HTTP server that lists its own connections (Node 18.2+: what its
  // closeIdleConnections goes through), or null.
  function ownConnections(server) {
    const k = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
    const list = k && server[k];
    return list && typeof list.all === 'function' ? list.all().map((parser) => parser.socket).filter(Boolean) : null;
  }

  // Every connection of a shim server, handed over or accepted on an inherited socket: kept only
  // where shutdown must find them (an HTTP server that does not list its own: `stopKeepAlive`), and
  // counted for least-busy. Otherwise nothing is done per connection.
  function track(server) {
    if (server[kTracked]) return;
    server[kTracked] = true;
    // Decided at the first connection: an HTTP server sets up its list when it starts listening.
    let keep;
    const onConnection = (socket) => {
      if (keep === undefined) {
        keep = typeof server.closeIdleConnections === 'function' && ownConnections(server) === null;
        if (!keep && !reportLoad) return server.removeListener('connection', onConnection);
      }
      const st = server[kState];
      if (st && keep) {
        st.sockets.add(socket);
        socket.once('close', () => st.sockets.delete(socket));
      }
      // least-busy only (two listeners a connection, for nothing in the other modes): done once
      // its writing side has finished (the response sent) or it closed, whichever is first: the
      // report then reaches pml before the client's next connection usually does.
      if (!reportLoad) return;
      let counted = true;
      const done = () => { if (counted) { counted = false; connectionClosed(); } };
      socket.once('finish', done);
      socket.once('close', done);
    };
    server.prependListener('connection', onConnection);
  }

  function describe(request) {
    if (request.path) return request.path;
    return (request.host ? request.host + ':' : '') + request.port;
  }

  function onListenReply(server, st, reply) {
    if (st.phase !== 'pending') {
      // Closed (or shut down) while we waited: give the address back.
      if (reply.ok) {
        send({ type: 'pml:unlisten', port: reply.port ?? null, host: st.request.host,
          path: st.request.path, address: reply.address ?? null });
      }
      return;
    }
    if (!reply.ok) {
      return fail(server, st, reply.code || 'EADDRINUSE', reply.error);
    }
    const key = typeof reply.address === 'string' ? reply.address
      : (st.request.path ? 'unix:' + st.request.path : String(reply.port));
    if (routes.has(key)) {
      // This process already serves it; Node would fail the second bind the same way.
      return fail(server, st, 'EADDRINUSE', null, true);
    }
    const parsed = parseAddress(key) || {};
    st.key = key;
    if (st.request.path == null) {
      st.port = typeof reply.port === 'number' ? reply.port : (parsed.port ?? st.request.port);
      let host = reply.host ?? parsed.host ?? st.request.host;
      if (!host || host === '*') host = '::';
      if (host === 'localhost') host = '127.0.0.1';
      st.host = host;
      st.family = reply.family || (net.isIPv6(host) ? 'IPv6' : 'IPv4');
    }
    st.phase = 'listening';
    routes.set(key, server);
    server._handle = fakeHandle(st);
    process.nextTick(() => server.emit('listening'));
  }

  function fail(server, st, code, message, local) {
    st.phase = 'failed';
    servers.delete(server);
    delete server[kState];
    server._pipeName = undefined;
    const where = st.request.path || `${st.request.host || '::'}:${st.request.port}`;
    const err = new Error(message || `listen ${code}: ${code === 'EADDRINUSE' ? 'address already in use' : 'failed'} ${where}`);
    err.code = code;
    const errno = os.constants.errno[code];
    if (typeof errno === 'number') err.errno = -errno;
    err.syscall = 'listen';
    if (st.request.path) err.address = st.request.path;
    else { err.address = st.request.host || '::'; err.port = st.request.port; }
    if (local) err.pml = 'this process already listens there';
    releaseChannelSoon();
    process.nextTick(() => server.emit('error', err));
  }

  // Stands in for the listening socket pml holds, so that Node's own `listening`, `address()`,
  // `close()` and "emit 'close' once the last connection is gone" work unchanged.
  function fakeHandle(st) {
    const handle = {
      fd: -1,
      close() {},
      ref() {},
      unref() {},
      getAsyncId() { return -1; },
    };
    if (st.request.path == null) {
      handle.getsockname = (out) => {
        out.address = st.host;
        out.family = st.family;
        out.port = st.port;
        return 0;
      };
    }
    return handle;
  }

  function addAbortSignal(server, signal) {
    if (!signal || typeof signal.addEventListener !== 'function') return;
    const onAbort = () => server.close();
    if (signal.aborted) { process.nextTick(onAbort); return; }
    signal.addEventListener('abort', onAbort, { once: true });
    server.once('close', () => signal.removeEventListener('abort', onAbort));
  }

  // -- Connections ----------------------------------------------------------------------------

  // What Node's net.Server does for a connection it accepted itself (onconnection in lib/net.js).
  function deliver(server, socket) {
    const st = server[kState];
    if (server.maxConnections && server._connections >= server.maxConnections) {
      server.emit('drop', { localPort: st.port, remoteAddress: socket.remoteAddress,
        remotePort: socket.remotePort, remoteFamily: socket.remoteFamily });
      socket.destroy();
      return;
    }
    socket.allowHalfOpen = Boolean(server.allowHalfOpen);
    if (server.noDelay && typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
    if (server.keepAlive && typeof socket.setKeepAlive === 'function') {
      socket.setKeepAlive(true, server.keepAliveInitialDelay || 0);
    }
    if (server.pauseOnConnect && socket._handle) {
      socket._handle.reading = false;
      socket._handle.readStop();
      socket.pause();
    }
    server._connections++;
    socket.server = server;
    socket._server = server; // net.Socket decrements _connections and emits the server's 'close'
    server.emit('connection', socket);
    if (st.phase === 'closing') endKeepAlive(socket);
  }

  // -- close and shutdown ---------------------------------------------------------------------

  net.Server.prototype.close = function pmlClose(cb) {
    const st = this[kState];
    if (!st) return origClose.apply(this, arguments);
    if (st.phase === 'pending') {
      st.phase = 'cancelled'; // the reply, if ok, is answered with an unlisten
      servers.delete(this);
      delete this[kState];
      releaseChannelSoon();
      return origClose.apply(this, arguments); // Node: cb gets ERR_SERVER_NOT_RUNNING
    }
    if (st.phase === 'listening') {
      st.phase = 'closing';
      routes.delete(st.key);
      if (!draining.has(st.key)) draining.set(st.key, new Set());
      draining.get(st.key).add(this);
      send({ type: 'pml:unlisten', port: st.port, host: st.request.host, path: st.request.path, address: st.key });
      this.once('close', () => {
        st.phase = 'closed';
        const set = draining.get(st.key);
        if (set) { set.delete(this); if (set.size === 0) draining.delete(st.key); }
        servers.delete(this);
        delete this[kState];
        if (shuttingDown) exitIfDone(); else releaseChannelSoon();
      });
      stopKeepAlive(this, st);
    }
    return origClose.apply(this, arguments);
  };

  // Idle keep-alive connections get this long to send one more request (answered with
  // "Connection: close") before they are closed: a client such as wrk has usually sent its next
  // request already when the server decides to stop, and closing at once would drop it.
  const IDLE_GRACE_MS = 1000;
  let closingGently = false;

  // HTTP: from now on every response says "Connection: close", and idle keep-alive
  // connections are closed, so clients go to another worker and the server drains.
  function stopKeepAlive(server, st) {
    if (typeof server.closeIdleConnections === 'function' && !Object.prototype.hasOwnProperty.call(server, 'emit')) {
      const emit = server.emit;
      server.emit = function (event, req, res) {
        if (event === 'request' && res && typeof res === 'object') res.shouldKeepAlive = false;
        return emit.apply(this, arguments);
      };
    }
    for (const socket of ownConnections(server) ?? st.sockets) endKeepAlive(socket);
    if (typeof server.closeIdleConnections !== 'function') return;
    if (!closingGently) { server.closeIdleConnections(); return; }
    const t = setTimeout(() => server.closeIdleConnections(), IDLE_GRACE_MS);
    t.unref();
    server.once('close', () => clearTimeout(t));
  }
  function endKeepAlive(socket) {
    const res = socket._httpMessage;
    if (res && !res.headersSent) res.shouldKeepAlive = false;
  }

  let exitScheduled = false;
  function shutdown(limitMs) {
    if (shuttingDown) return;
    shuttingDown = true;
    holdChannel(); // stay alive until drained
    if (limitMs > 0) setTimeout(() => process.exit(0), limitMs).unref();
    // net.Server's close, not http.Server's: that one closes idle connections at once.
    closingGently = true;
    try {
      for (const server of [...servers]) {
        const st = server[kState];
        if (st && (st.phase === 'listening' || st.phase === 'pending')) net.Server.prototype.close.call(server);
      }
    } finally {
      closingGently = false;
    }
    exitIfDone();
  }
  function exitIfDone() {
    if (servers.size > 0 || exitScheduled) return;
    exitScheduled = true;
    // Let 'close' callbacks queued with ours run first.
    setImmediate(() => process.exit(0));
  }
})();
