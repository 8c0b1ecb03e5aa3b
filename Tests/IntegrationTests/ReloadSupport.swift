// Helpers for the reload tests (ReloadTests.swift): the worker programs they run (`/` and a
// 300 ms `/slow`). Requests and load: HTTPClient.swift and LoadGenerator.swift; a `pml` in the
// background: ChildProcess (Harness.swift).

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Worker programs

enum ReloadFixture {
    /// A Node HTTP server, unchanged for pml (it listens on FX_PORT; pml's preload routes it):
    /// `/` answers `hello from <pid> V=<$V>` at once, `/slow` the same after 300 ms.
    /// - FX_STARTS=<file>: once listening, appends "<pid> <epoch ms>".
    /// - FX_READY_DELAY=<ms>: once listening, waits that long, then `process.send({type:'ready'})`
    ///   (for `ready = "message"`).
    static let server = #"""
        const http = require('http');
        const fs = require('fs');
        const server = http.createServer((req, res) => {
          const reply = () => {
            res.setHeader('Content-Type', 'text/plain');
            res.end('hello from ' + process.pid + ' V=' + (process.env.V || '') + '\n');
          };
          if (req.url === '/slow') setTimeout(reply, 300); else reply();
        });
        server.listen(Number(process.env.FX_PORT), () => {
          if (process.env.FX_STARTS) fs.appendFileSync(process.env.FX_STARTS, process.pid + ' ' + Date.now() + '\n');
          const delay = Number(process.env.FX_READY_DELAY || 0);
          if (delay > 0) setTimeout(() => process.send({ type: 'ready' }), delay);
        });

        """#

    /// The same server, handling pml's "shutdown" itself (PM2 style): it closes the server and,
    /// once closed, writes FX_DIR/<pid>.closed and exits 0.
    static let selfShutdown = #"""
        const http = require('http');
        const fs = require('fs');
        const server = http.createServer((req, res) => {
          const reply = () => res.end('hello from ' + process.pid + ' V=' + (process.env.V || '') + '\n');
          if (req.url === '/slow') setTimeout(reply, 300); else reply();
        });
        server.listen(Number(process.env.FX_PORT));
        process.on('message', (m) => {
          if (m && typeof m === 'object' && typeof m.cmd === 'string' && m.cmd.startsWith('NODE_')) return;
          fs.appendFileSync(process.env.FX_DIR + '/' + process.pid + '.messages', JSON.stringify(m) + '\n');
          if (m === 'shutdown') {
            server.close(() => {
              fs.writeFileSync(process.env.FX_DIR + '/' + process.pid + '.closed', 'closed\n');
              process.exit(0);
            });
          }
        });

        """#

    /// The same server, recording every message from pml (other than NODE_ internals) as one JSON
    /// line in FX_DIR/<pid>.messages; on {type:"bye"} it closes the server and exits 0.
    static let recorder = #"""
        const http = require('http');
        const fs = require('fs');
        const server = http.createServer((req, res) => {
          res.end('hello from ' + process.pid + ' V=' + (process.env.V || '') + '\n');
        });
        server.listen(Number(process.env.FX_PORT));
        process.on('message', (m) => {
          if (m && typeof m === 'object' && typeof m.cmd === 'string' && m.cmd.startsWith('NODE_')) return;
          fs.appendFileSync(process.env.FX_DIR + '/' + process.pid + '.messages', JSON.stringify(m) + '\n');
          if (m && m.type === 'bye') server.close(() => process.exit(0));
        });

        """#

    /// A new version that throws at top level, before it listens.
    static let crashAtStart = #"""
        throw new Error('pml-reload-fixture: this version is broken');

        """#

    /// A fork-mode worker (no listen): records its pid in FX_PIDS and sleeps.
    static let forkWorker = #"""
        import os, signal, sys, time
        with open(os.environ["FX_PIDS"], "a") as f:
            f.write("%d\n" % os.getpid())
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)

        """#
}

// MARK: - Sandbox helpers for reloads

extension Sandbox {
    /// The pids of `app`'s workers in `pml ls --json`.
    func pidSet(_ app: String) async throws -> Set<Int32> {
        Set(try await rows(app).compactMap(\.pid))
    }

    /// `rounds` graceful reloads of `app`, `pauseMs` apart: each must succeed and replace every one
    /// of its `count` workers (`pids` before the first), which serve again. The pids after the last.
    @discardableResult
    func gracefulReloads(_ app: String, count: Int, replacing pids: Set<Int32>, rounds: Int = 3, pauseMs: Int,
                         sourceLocation: SourceLocation = #_sourceLocation) async throws -> Set<Int32> {
        var pids = pids
        for round in 1...rounds {
            let r = try await pml(["reload", app, "--graceful"], timeout: 40)
            #expect(r.ok, "reload \(round):\n\(r)", sourceLocation: sourceLocation)
            let now = Set(try await waitServing(app, count: count).compactMap(\.pid))
            #expect(now.isDisjoint(with: pids), "reload \(round) replaced every worker", sourceLocation: sourceLocation)
            pids = now
            await sleepMs(pauseMs)
        }
        return pids
    }

    /// Replaces `old` with `new` in the file at `path` (which must contain it).
    func edit(_ path: String, replacing old: String, with new: String) throws {
        let text = read(path)
        guard text.contains(old) else { throw HarnessError("\(path) does not contain \(old)") }
        try text.replacingOccurrences(of: old, with: new).write(toFile: path, atomically: true, encoding: .utf8)
    }
}
