// The integration tests' one load generator: threads that each make GETs one connection at a
// time until stopped, recording every request's outcome with its start and end times; and
// `ParallelGets`, a batch of GETs all started at once.

import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Threads making GETs until stopped: `fast` ones GET `/` with a pause of `pauseMs` between
/// requests, `slow` ones GET `/slow` back to back (the fixtures answer it after 300 ms), so that
/// some slow request is in flight at any moment. Plain threads: blocking sockets stay off the
/// test's executor.
final class LoadGenerator: @unchecked Sendable {
    /// One request: its path, when it started and ended (`nowMs()`), and what came of it.
    struct Sample: Sendable {
        let path: String
        let start: Double
        let end: Double
        let result: Result<HTTPReply, RequestFailure>
        var pid: Int32? { if case .success(let r) = result { return r.pid } else { return nil } }
        var failure: RequestFailure? { if case .failure(let f) = result { return f } else { return nil } }
        func overlaps(_ from: Double, _ to: Double) -> Bool { start < to && end > from }
    }

    let endpoint: Endpoint
    private let pauseMs: Int
    private let timeout: Double
    private let lock = NSLock()
    private var _samples: [Sample] = []
    private var stopping = false
    private var running = 0
    /// `betweenRequests`: threads wait before their next request while `held`; `busy` are mid-request.
    private let gate = NSCondition()
    private var held = false
    private var busy = 0

    init(_ endpoint: Endpoint, pauseMs: Int = 2, timeout: Double = 5) {
        self.endpoint = endpoint
        self.pauseMs = pauseMs
        self.timeout = timeout
    }

    /// Starts `fast` threads on `fastPath` (`/`) and `slow` threads on `/slow`.
    func start(fast: Int = 1, slow: Int = 0, fastPath: String = "/") {
        for i in 0..<(fast + slow) {
            let path = i < fast ? fastPath : "/slow"
            lock.withLock { running += 1 }
            Thread { [self] in run(path: path, pauseMs: path == "/slow" ? 0 : pauseMs) }.start()
        }
    }

    private func run(path: String, pauseMs: Int) {
        while !(lock.withLock { stopping }) {
            gate.lock()
            while held && !(lock.withLock { stopping }) { gate.wait() }
            if held { // stopping
                gate.unlock()
                break
            }
            busy += 1
            gate.unlock()
            let start = nowMs()
            let result = HTTP.get(endpoint, path: path, timeout: timeout)
            let sample = Sample(path: path, start: start, end: nowMs(), result: result)
            lock.withLock { _samples.append(sample) }
            gate.withLock { busy -= 1 }
            if pauseMs > 0 { usleep(useconds_t(pauseMs * 1000)) }
        }
        lock.withLock { running -= 1 }
    }

    /// The samples so far, in the order they ended.
    var samples: [Sample] { lock.withLock { _samples } }

    /// Runs `step` at a moment no request of this generator is in flight: each thread finishes
    /// the request it is making and waits; they go on as soon as `step` returns. For a step whose
    /// promise leaves out what is in flight (a worker killed loses the requests it holds). If
    /// requests are still in flight once they should all have timed out, the test records an issue
    /// (the step then runs with them in flight, and may fail them: that failure is not the product's).
    func betweenRequests<T>(sourceLocation: SourceLocation = #_sourceLocation, _ step: () async throws -> T) async rethrows -> T {
        gate.withLock { held = true }
        let deadline = nowMs() + (timeout + 3) * 1000
        while (gate.withLock { busy }) > 0 && nowMs() < deadline { await sleepMs(1) }
        let stillBusy = gate.withLock { busy }
        if stillBusy > 0 {
            Issue.record("\(stillBusy) request(s) still in flight \(Int(timeout + 3)) s after the load was held: the step runs with them", sourceLocation: sourceLocation)
        }
        defer {
            gate.withLock {
                held = false
                gate.broadcast()
            }
        }
        return try await step()
    }

    /// Stops after the requests in flight and returns every sample.
    @discardableResult
    func stop() async -> [Sample] {
        lock.withLock { stopping = true }
        gate.withLock { gate.broadcast() }
        let deadline = nowMs() + (timeout + 3) * 1000
        while (lock.withLock { running }) > 0 && nowMs() < deadline { await sleepMs(10) }
        return samples
    }
}

/// Summaries for assertions and failure messages.
extension Array where Element == LoadGenerator.Sample {
    var failed: [LoadGenerator.Sample] { filter { $0.failure != nil } }

    /// The pids that answered, one per successful request.
    var responders: [Int32] { compactMap(\.pid) }

    func summary(limit: Int = 8) -> String {
        let f = failed
        var counts: [Int32: Int] = [:]
        for p in responders { counts[p, default: 0] += 1 }
        let slow = filter { $0.path == "/slow" }.count
        var lines = ["\(count) requests" + (slow > 0 ? " (\(slow) to /slow)" : "")
                     + ", \(f.count) failed; per pid: \(counts.sorted { $0.key < $1.key })"]
        for s in f.prefix(limit) { lines.append("  at +\(Int(s.start - (first?.start ?? 0))) ms: \(s.failure!)") }
        return lines.joined(separator: "\n")
    }
}

/// `count` GETs started at once, each on its own thread; `wait()` returns them in order.
final class ParallelGets: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<HTTPReply, RequestFailure>?]

    init(port: Int, count: Int, timeout: Double, path: String = "/") {
        results = Array(repeating: nil, count: count)
        for i in 0..<count {
            Thread { [self] in
                let r = HTTP.get(.local(port), path: path, timeout: timeout)
                lock.withLock { results[i] = r }
            }.start()
        }
    }

    var finished: Int { lock.withLock { results.filter { $0 != nil }.count } }

    func wait() async -> [Result<HTTPReply, RequestFailure>] {
        while finished < lock.withLock({ results.count }) { await sleepMs(20) }
        return lock.withLock { results.map { $0! } }
    }
}

/// The steps a test takes under load, timed as the samples are, so that a failure message places
/// each failed request among them (after which step it started, and which ones it overlapped).
struct Steps {
    private var marks: [(name: String, at: Double)] = []

    /// Notes that `name` happens now.
    mutating func mark(_ name: String) { marks.append((name, nowMs())) }

    /// The steps and every failed sample, in ms since the first sample started: e.g.
    /// `+983..+986 ms, after "update done" (+683), spanning "worker 0 killed" (+984): <failure>`.
    func place(_ samples: [LoadGenerator.Sample], limit: Int = 8) -> String {
        let origin = samples.map(\.start).min() ?? marks.first?.at ?? 0
        func at(_ t: Double) -> String { "+\(Int((t - origin).rounded()))" }
        var lines = ["steps: " + marks.map { "\($0.name) \(at($0.at))" }.joined(separator: ", ")]
        for s in samples.failed.prefix(limit) {
            let before = marks.last { $0.at <= s.start }.map { "after \"\($0.name)\" (\(at($0.at)))" } ?? "before every step"
            let during = marks.filter { $0.at > s.start && $0.at < s.end }.map { "\"\($0.name)\" (\(at($0.at)))" }
            lines.append("  \(at(s.start))..\(at(s.end)) ms, \(before)"
                         + (during.isEmpty ? "" : ", spanning \(during.joined(separator: ", "))") + ": \(s.failure!)")
        }
        return lines.joined(separator: "\n")
    }
}
