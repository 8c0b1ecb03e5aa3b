import PMLCore
import PMLPosix

/// Watch mode for one app: inotify events from its watched paths in the loop, and one call of
/// `onBurst` per burst of changes — `delayMs` after the first change, however many follow.
final class AppWatcher {
    /// Folders one app may watch (`PML_WATCH_MAX_FOLDERS` in the daemon's environment, default
    /// 4096): a tree bigger than this is refused with a clear error rather than eating the
    /// system's inotify watches.
    static let maxDirectories = HomeConfig.environmentInteger("PML_WATCH_MAX_FOLDERS", in: 1...(1 << 20), default: 4096)

    private let watcher: FileWatcher
    private let delayMs: Int
    private weak var loop: EventLoop?
    private var handle: IOHandle?
    private var burst: TimerHandle?
    private var firstChange: String?
    private let onBurst: (_ firstChange: String) -> Void
    private let onProblem: (String) -> Void

    init(spec: WatchSpec, loop: EventLoop, isIgnored: @escaping (String) -> Bool,
         onProblem: @escaping (String) -> Void, onBurst: @escaping (String) -> Void) throws(WatchError) {
        watcher = try FileWatcher(paths: spec.paths, maxDirectories: Self.maxDirectories, isIgnored: isIgnored)
        delayMs = spec.delayMs
        self.loop = loop
        self.onBurst = onBurst
        self.onProblem = onProblem
        do {
            handle = try loop.register(fd: watcher.fd, events: [.readable]) { [unowned self] _ in self.readable() }
        } catch {
            throw WatchError("cannot watch: \(error)")
        }
    }

    private func readable() {
        let changes = watcher.readChanges()
        if let problem = watcher.takeProblem() { onProblem(problem) }
        guard let first = changes.first, burst == nil, let loop else { return }
        firstChange = first
        burst = loop.schedule(after: delayMs) { [unowned self] in
            self.burst = nil
            self.onBurst(self.firstChange ?? first)
        }
    }

    /// Stops watching (the app is deleted, or its file no longer asks for watch mode).
    func close() {
        if let handle { loop?.unregister(handle) }
        handle = nil
        if let burst { loop?.cancel(burst) }
        burst = nil
    }

    deinit { close() }
}
