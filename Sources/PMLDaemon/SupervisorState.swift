import FoundationEssentials
import Glibc
import PMLCore
import PMLPosix

/// What survives the daemon: state.json (kept current, for recovery after a crash) and dump.json
/// (`pml save` / `pml resurrect`, and `pml startup` at boot). Both are written atomically.
extension Supervisor {
    var statePath: String { paths.home + "/state.json" }

    func currentState() -> SavedState {
        var state = SavedState(daemonPID: getpid(), apps: apps.compactMap { app in
            app.startArgs.map {
                var saved = SavedApp(name: app.spec.name, start: $0, instances: app.workers.count,
                                     running: app.workers.contains { $0.status != .stopped })
                if keeper != nil {
                    saved.workers = savedWorkers(app)
                    saved.listeners = savedListeners(app)
                }
                return saved
            }
        })
        state.keeperPID = keeper?.keeperPID
        return state
    }

    /// Writes state.json on the loop's next quiet moment; many changes in a row write once.
    func persistStateSoon() {
        guard !foreground, !statePersistScheduled else { return }
        statePersistScheduled = true
        loop.schedule(after: 100) { [unowned self] in
            self.statePersistScheduled = false
            self.persistStateNow()
        }
    }

    /// Writes state.json now (after each command that changes the apps, and last before exit).
    func persistStateNow() {
        // While a successor adopts, the state on disk is the dead daemon's, complete: a half-restored
        // one written now would lose apps if this daemon died too. The take-over writes it at its end.
        guard !foreground, adoption == nil else { return }
        do {
            try Self.writeAtomically(currentState(), to: statePath)
        } catch {
            logger.warning("cannot write \(statePath): \(error)")
        }
    }

    /// `pml save`: the apps as they are now, to dump.json. Returns how many.
    func saveDump() throws -> Int {
        var state = currentState()
        state.daemonPID = nil
        state.keeperPID = nil
        for i in state.apps.indices {
            state.apps[i].workers = nil
            state.apps[i].listeners = nil
        }
        try Self.writeAtomically(state, to: paths.dump)
        return state.apps.count
    }

    /// Temp file, fsync, rename: a crash mid-write leaves the old file or the new one, never half.
    static func writeAtomically(_ state: SavedState, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(state)
        let tmp = "\(path).tmp.\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open \(tmp)", errno: errno) }
        defer { closeFD(fd) }
        try writeAll(fd, String(decoding: data, as: UTF8.self) + "\n")
        guard fsync(fd) == 0, rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError("write \(path)", errno: e)
        }
    }

    /// state.json or dump.json, every number checked (`SavedState.checked`): what a tampered or
    /// corrupt file gets wrong is clamped or its record left out, one line each in daemon.log.
    func readState(_ path: String) throws -> SavedState? {
        try readCheckedState(path)?.state
    }

    /// `readState` and the lines it wrote to daemon.log.
    private func readCheckedState(_ path: String) throws -> (state: SavedState, problems: [String])? {
        guard let bytes = readFile(path) else { return nil }
        let (state, problems) = try JSONDecoder().decode(SavedState.self, from: Data(bytes)).checked(nowMs: monotonicMs())
        for p in problems { logger.warning("\(path): \(p)") }
        return (state, problems)
    }

    /// Starts the apps of a saved state that are not here yet, one after another (an app file is
    /// evaluated on its script thread first). Stopped apps stay out. Each next app is started
    /// from the event loop, never from the previous one's answer: a start that answers at once
    /// must not grow the stack by one frame per app.
    func restore(_ state: SavedState, done: @escaping (_ started: [String], _ failed: [String]) -> Void) {
        let wanted = state.apps.filter { saved in saved.running && !apps.contains { $0.spec.name == saved.name } }
        var started: [String] = [], failed: [String] = []
        var next = wanted.startIndex
        func step() {
            guard next < wanted.endIndex else { return done(started, failed) }
            let saved = wanted[next]
            next += 1
            var args = saved.start
            args.only = saved.name
            args.instances = .int(Int64(saved.instances))
            start(args) { [unowned self] r in
                if r.ok { started.append(saved.name) } else { failed.append("\(saved.name): \(r.error ?? "failed")") }
                self.loop.schedule(after: 0) { step() }
            }
        }
        step()
    }

    /// What failed, for one answer line: the first few, then how many more (each goes to daemon.log).
    func failedLine(_ failed: [String]) -> String {
        let shown = 5
        for f in failed { logger.warning("could not restore \(f)") }
        return failed.prefix(shown).joined(separator: "; ") + (failed.count > shown ? "; and \(failed.count - shown) more (see daemon.log)" : "")
    }

    /// `pml resurrect`: what `pml save` wrote.
    func resurrect(from path: String, respond: @escaping (ControlResponse) -> Void) {
        let state: SavedState, leftOut: String
        do {
            guard let (s, problems) = try readCheckedState(path) else {
                return respond(.failure("nothing saved: \(path) does not exist (run pml save first)"))
            }
            state = s
            leftOut = problems.isEmpty ? "" : " (\(path): \(problems.count) problem(s), see daemon.log: \(problems[0]))"
        } catch {
            return respond(.failure("\(path) cannot be read: \(error)"))
        }
        restore(state) { [unowned self] started, failed in
            if !failed.isEmpty {
                return respond(.failure("resurrected \(started.count) app(s); failed: \(self.failedLine(failed))\(leftOut)"))
            }
            respond(ControlResponse(ok: true, message: (started.isEmpty ? "nothing to resurrect: every saved app is here" :
                                    "resurrected \(started.joined(separator: ", "))") + leftOut, processes: self.rows()))
        }
    }

    /// At start-up: kill whatever workers a dead daemon of this home left, then take up its apps.
    /// `done` gets a sentence for the CLI when there was something to take up.
    func recoverFromDeadDaemon(done: @escaping (String?) -> Void) {
        let swept = Daemon.sweepOrphans(home: paths.home, daemonPID: nil)
        guard let state = try? readState(statePath), let old = state.daemonPID, old != getpid(),
              !processIsAlive(old), state.apps.contains(where: \.running) else {
            if swept > 0 { logger.warning("killed \(swept) worker process(es) an earlier daemon left behind") }
            return done(nil)
        }
        restore(state) { [unowned self] started, failed in
            var sentence = "the previous daemon (pid \(old)) died; took up \(started.count) app\(started.count == 1 ? "" : "s")"
            if !started.isEmpty { sentence += " (\(started.joined(separator: ", ")))" }
            if !failed.isEmpty { sentence += "; could not restart \(self.failedLine(failed))" }
            if swept > 0 { sentence += "; killed \(swept) leftover worker process(es)" }
            self.logger.warning("\(sentence)")
            done(sentence)
        }
    }
}
