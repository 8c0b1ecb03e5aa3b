import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// PM2 ecosystem files as pml reads them: node evaluates .js/.cjs/.mjs (as PM2 does, never running
/// them as an app), .json is read directly, .yaml/.yml by pml-yaml (Yams, kept out of this binary so
/// the daemon does not carry Foundation); `PM2Mapping` turns the apps into pml's.
enum EcosystemFile {
    /// PM2's rule (Common.isConfigFile): these names are configuration, not a script to run.
    static func isEcosystem(_ path: String) -> Bool {
        let lower = path.lowercased()
        return [".json", ".yaml", ".yml", ".config.js", ".config.cjs", ".config.mjs"].contains { lower.hasSuffix($0) }
    }

    /// What the file exports, as data.
    static func read(_ path: String, display: String) throws(CLIError) -> ScriptValue {
        let lower = path.lowercased()
        if lower.hasSuffix(".json") { return try readJSON(path, display: display) }
        if lower.hasSuffix(".yaml") || lower.hasSuffix(".yml") { return try readYAML(path, display: display) }
        if lower.hasSuffix(".js") || lower.hasSuffix(".cjs") || lower.hasSuffix(".mjs") {
            return try NodeEvaluator.evaluate(path: path, display: display)
        }
        throw CLIError("\(display) is not a PM2 ecosystem file (.js, .cjs, .mjs, .json, .yaml or .yml)")
    }

    /// The apps of the file at the absolute `path`, mapped to pml app tables.
    static func load(_ path: String, display: String, envName: String?) throws(CLIError) -> PM2Mapping.Ecosystem {
        let value = try read(path, display: display)
        let mapping = PM2Mapping(folder: folder(of: path), display: display, envName: envName, probe: probe)
        do {
            return try mapping.map(value)
        } catch {
            throw CLIError(error.description)
        }
    }

    /// The machine as the mapping sees it.
    static let probe = PM2Mapping.Probe(
        fileExists: { pathExists($0) },
        programOnPath: { resolveExecutable($0, path: processEnvironment()["PATH"], cwd: nil) != nil },
        runsDirectly: { path in
            guard access(path, X_OK) == 0, let head = readFile(path, limit: 4) else { return false }
            return head.starts(with: [0x23, 0x21]) || head.starts(with: [0x7F, 0x45, 0x4C, 0x46])
        })

    static func folder(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }

    static func readJSON(_ path: String, display: String) throws(CLIError) -> ScriptValue {
        guard let bytes = readFile(path) else { throw CLIError("cannot read \(display)") }
        do {
            return try JSONDecoder().decode(ScriptValue.self, from: Data(bytes))
        } catch {
            throw CLIError("\(display) is not valid JSON")
        }
    }

    /// YAML through the pml-yaml helper beside this binary (it writes the data as JSON, like node).
    static func readYAML(_ path: String, display: String) throws(CLIError) -> ScriptValue {
        guard let exe = realPath("/proc/self/exe") else { throw CLIError("cannot find the pml binary") }
        let helper = folder(of: exe) + "/pml-yaml"
        guard access(helper, X_OK) == 0 else {
            throw CLIError("\(display) is YAML and pml-yaml (pml's YAML reader) is missing beside \(exe): reinstall pml (scripts/install.sh), or use a .json or .js file")
        }
        return try FileExport.run([helper, path], tool: "pml-yaml", display: display)
    }
}

/// An ecosystem file named on the command line: its apps, after `--only` and `--env`.
struct EcosystemTarget {
    let path: String
    let display: String
    let ecosystem: PM2Mapping.Ecosystem

    /// `only`: app names separated by commas or spaces (PM2's --only a,b).
    init(path: String, display: String, only: String?, envName: String?) throws(CLIError) {
        self.path = path
        self.display = display
        var eco = try EcosystemFile.load(path, display: display, envName: envName)
        if let only {
            let wanted = only.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
            if let missing = wanted.first(where: { w in !eco.apps.contains { $0.name == w } }) {
                throw CLIError("\(display) declares no app named \"\(missing)\" (it declares \(eco.apps.map(\.name).joined(separator: ", ")))")
            }
            eco.apps = eco.apps.filter { wanted.contains($0.name) }
        }
        ecosystem = eco
    }

    var names: [String] { ecosystem.apps.map(\.name) }

    /// The start arguments for some of its apps (all by default).
    func startArguments(_ base: StartArguments, only names: [String]? = nil) -> StartArguments {
        var args = base
        args.file = nil
        args.ecosystem = path
        args.envName = nil  // already merged by the mapping
        let apps = ecosystem.apps.filter { names?.contains($0.name) ?? true }
        args.app = .array(apps.map { .object($0.table) })
        return args
    }

    /// What pml does not honour, said once: one line per app, on stderr.
    func warnIgnored() {
        for line in ecosystem.ignoredSummary {
            try? writeAll(2, "pml: \(display): not honoured by pml: \(line)\n")
        }
        for note in ecosystem.notes { try? writeAll(2, "pml: \(display): \(note)\n") }
    }
}

/// Evaluates a JavaScript ecosystem file with node and returns what it exports, as JSON.
enum NodeEvaluator {
    /// Run as `node -e <this> -- <file>`: the exports go to fd 3 as JSON (the file may print on stdout);
    /// a failure is one marked line on stderr and exit status 3.
    static let script = #"""
    const file = process.argv[1];
    const fs = require('fs');
    const report = (e) => {
      const stack = String((e && e.stack) || '');
      let line = '';
      if (e instanceof SyntaxError && stack.startsWith(file + ':')) {
        line = stack.split('\n')[0].slice(file.length + 1);
      } else {
        for (const l of stack.split('\n')) {
          const i = l.indexOf(file + ':');
          if (i >= 0) { const m = /^(\d+)/.exec(l.slice(i + file.length + 1)); if (m) { line = m[1]; break; } }
        }
      }
      let msg = (e !== null && typeof e === 'object' && 'message' in e)
        ? (e.name || 'Error') + ': ' + String(e.message) : 'threw ' + String(e);
      msg = msg.split('\n').map((s) => s.trim()).filter(Boolean)[0] || 'Error';
      fs.writeSync(2, '\npml-import-error\t' + line + '\t' + msg + '\n');
      process.exit(3);
    };
    const send = (exported) => {
      try {
        // An ES module (require(esm), import()): its default export is the config.
        if (exported && exported[Symbol.toStringTag] === 'Module' && exported.default !== undefined) {
          exported = exported.default;
        }
        const text = JSON.stringify(exported === undefined ? null : exported);
        const buf = Buffer.from(text === undefined ? 'null' : text);
        let off = 0;
        while (off < buf.length) off += fs.writeSync(3, buf, off);
        process.exit(0);
      } catch (e) { report(e); }
    };
    try {
      send(require(file));
    } catch (e) {
      if (e && (e.code === 'ERR_REQUIRE_ESM' || e.code === 'ERR_REQUIRE_ASYNC_MODULE')) {
        import(require('url').pathToFileURL(file).href)
          .then(send, report);
      } else {
        report(e);
      }
    }
    """#

    static func evaluate(path: String, display: String) throws(CLIError) -> ScriptValue {
        guard resolveExecutable("node", path: processEnvironment()["PATH"], cwd: nil) != nil else {
            throw CLIError("\(display) is JavaScript and node is not on PATH: install Node.js, or export the apps as JSON")
        }
        return try FileExport.run(["node", "-e", script, "--", path], tool: "node", display: display)
    }
}

/// Runs a program that writes a file's data as JSON to fd 3 (node for .js, pml-yaml for YAML), under a
/// deadline and a size cap; a failure it explains is one marked stderr line: "pml-import-error\t<line>\t<message>".
enum FileExport {
    static let timeoutMs = 30_000
    /// An ecosystem is a few kilobytes: anything this big is a mistake, not a config.
    static let maxExportBytes = 16 << 20

    static func run(_ argv: [String], tool: String, display: String) throws(CLIError) -> ScriptValue {
        let env = processEnvironment()
        let result: (read: Int32, write: Int32)
        let errors: (read: Int32, write: Int32)
        do {
            result = try makePipe(nonblockingRead: false)
            errors = try makePipe(nonblockingRead: false)
        } catch {
            throw CLIError("cannot run \(tool): \(error)")
        }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let pid: Int32
        do {
            pid = try spawnProcess(SpawnRequest(
                argv: argv, env: env, cwd: nil,
                fds: [(devNull, 0), (devNull, 1), (errors.write, 2), (result.write, 3)],
                newSession: true, parentDeathSignal: SIGKILL))
        } catch {
            for fd in [result.read, result.write, errors.read, errors.write, devNull] { closeFD(fd) }
            throw CLIError("cannot run \(tool): \(error.description)")
        }
        for fd in [result.write, errors.write, devNull] { closeFD(fd) }
        defer { closeFD(result.read); closeFD(errors.read) }

        var output: [UInt8] = []
        var stderr: [UInt8] = []
        var open = [result.read, errors.read]
        let deadline = monotonicMs() + timeoutMs
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            let left = deadline - monotonicMs()
            if left <= 0 {
                _ = kill(-pid, SIGKILL)
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
                throw CLIError("\(tool) took more than \(timeoutMs / 1000) s to read \(display)")
            }
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let n = poll(&fds, nfds_t(fds.count), Int32(min(left, 1000)))
            if n < 0 && errno == EINTR { continue }
            for p in fds where p.revents != 0 {
                let got = chunk.withUnsafeMutableBytes { Glibc.read(p.fd, $0.baseAddress, $0.count) }
                if got > 0 {
                    if p.fd == result.read {
                        output += chunk[0..<got]
                        if output.count > maxExportBytes {
                            _ = kill(-pid, SIGKILL)
                            var status: Int32 = 0
                            _ = waitpid(pid, &status, 0)
                            throw CLIError("\(display) exports more than \(maxExportBytes >> 20) MiB of data")
                        }
                    } else if stderr.count < 1 << 20 {
                        stderr += chunk[0..<got]
                    }
                } else if got == 0 || (errno != EINTR && errno != EAGAIN) {
                    open.removeAll { $0 == p.fd }
                }
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7F) == 0
        let code = (status >> 8) & 0xFF

        let errText = String(decoding: stderr, as: UTF8.self)
        if let marked = errText.split(separator: "\n").last(where: { $0.hasPrefix("pml-import-error\t") }) {
            let parts = marked.split(separator: "\t", maxSplits: 2, omittingEmptySubsequences: false)
            let line = parts.count > 1 ? String(parts[1]) : ""
            let message = parts.count > 2 ? String(parts[2]) : "error"
            throw CLIError("\(display)\(line.isEmpty ? "" : ":" + line): \(message)")
        }
        guard exited, code == 0 else {
            let last = errText.split(separator: "\n").last { !$0.importTrimmed.isEmpty }.map { String($0.importTrimmed) }
            let how = exited ? "exit status \(code)" : "signal \(status & 0x7F)"
            throw CLIError("\(tool) could not read \(display) (\(how))\(last.map { ": " + $0 } ?? "")")
        }
        do {
            return try JSONDecoder().decode(ScriptValue.self, from: Data(output))
        } catch {
            throw CLIError("\(display) exported something that is not JSON data")
        }
    }
}

