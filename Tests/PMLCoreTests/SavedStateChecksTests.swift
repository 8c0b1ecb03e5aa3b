import PMLCore
import Testing

@Suite struct SavedStateChecksTests {
    static func worker(id: Int = 3, instance: Int = 0, pid: Int32 = 4321, startedAtMs: Int = 500,
                       restarts: Int = 2, backoffStep: Int = 1, dispatched: Int = 9) -> SavedWorker {
        SavedWorker(id: id, instance: instance, pid: pid, startTime: 77, startedAtMs: startedAtMs, status: .online,
                    restarts: restarts, unstableRestarts: 0, backoffStep: backoffStep, listening: [], dispatched: dispatched)
    }

    static func state(_ workers: [SavedWorker], slots: [Int]? = nil, port: Int? = 8080) -> SavedState {
        var app = SavedApp(name: "web", start: StartArguments(clientEnv: [:], clientCwd: "/"), instances: 2, running: true)
        app.workers = workers
        app.listeners = [SavedListener(tag: "l.1.0.", address: .tcp(host: nil, port: 8080), requestedPort: port, slots: slots)]
        var s = SavedState(daemonPID: 10, apps: [app])
        s.keeperPID = 9
        return s
    }

    @Test func aSoundStateIsUnchanged() {
        let s = Self.state([Self.worker(), Self.worker(id: 4, instance: 1)], slots: [0, 1])
        let (checked, problems) = s.checked(nowMs: 1000)
        #expect(checked == s && problems.isEmpty)
    }

    @Test func impossibleIdsInstancesAndPidsRefuseTheRecord() {
        let s = Self.state([Self.worker(id: Int.max), Self.worker(id: -1, instance: 1), Self.worker(id: 5, instance: 1 << 40),
                            Self.worker(id: 6, pid: 0), Self.worker(id: 7, pid: -1), Self.worker(id: 8, instance: 1)])
        let (checked, problems) = s.checked(nowMs: 1000)
        #expect(checked.apps[0].workers?.map(\.id) == [8])
        #expect(problems.count == 5, "one line per refused record: \(problems)")
        #expect(problems[0] == "web: worker id \(Int.max) is outside 0...\(SavedState.maxWorkerID); record refused")
        // The id allocator's next id (max + 1) cannot overflow any more.
        let maxID = checked.apps.flatMap { $0.workers ?? [] }.map(\.id).max() ?? -1
        #expect(maxID < SavedState.maxWorkerID && maxID + 1 > maxID)
    }

    @Test func aRepeatedIdIsRefusedOnce() {
        let (checked, problems) = Self.state([Self.worker(id: 3), Self.worker(id: 3, instance: 1)]).checked(nowMs: 1000)
        #expect(checked.apps[0].workers?.map(\.instance) == [0])
        #expect(problems == ["web: worker id 3 appears twice; record refused"])
    }

    @Test func countersAndStartTimesAreClamped() {
        let s = Self.state([Self.worker(startedAtMs: Int.min, restarts: Int.max, backoffStep: Int.max, dispatched: -5),
                            Self.worker(id: 4, instance: 1, startedAtMs: 5000)])
        let (checked, problems) = s.checked(nowMs: 1000)
        let w = checked.apps[0].workers ?? []
        #expect(w.count == 2)
        #expect(w[0].startedAtMs == 0 && w[0].restarts == SavedState.maxCount
                && w[0].backoffStep == SavedState.maxBackoffStep && w[0].dispatched == 0)
        #expect(w[1].startedAtMs == 1000, "a start in the future is now")
        #expect(problems.count == 2)
        #expect(problems[0].hasPrefix("web: worker 3: started_at_ms \(Int.min), restarts \(Int.max)") && problems[0].hasSuffix("clamped"))
        // What the daemon then computes from them stays in range.
        #expect(1000 - w[0].startedAtMs >= 0 && w[0].restarts + 1 > w[0].restarts)
    }

    @Test func slotsPortsAndPidsOfTheStateAreChecked() {
        var s = Self.state([Self.worker()], slots: [0, -1, 5000, 1], port: 70000)
        s.daemonPID = -1
        s.keeperPID = 0
        let (checked, problems) = s.checked(nowMs: 1000)
        #expect(checked.apps[0].listeners?.first?.slots == [0, 1])
        #expect(checked.apps[0].listeners?.first?.requestedPort == nil)
        #expect(checked.daemonPID == nil && checked.keeperPID == nil)
        #expect(problems.count == 4, "\(problems)")
    }

    @Test func repeatedNamesAndAppsPastTheCapAreLeftOut() {
        let app = { (name: String) in SavedApp(name: name, start: StartArguments(clientEnv: [:], clientCwd: "/"), instances: 1, running: true) }
        let names = (0..<(SavedState.maxApps + 50)).map { "a\($0)" }
        let s = SavedState(daemonPID: 10, apps: [app("a0"), app("a1")] + names.map(app) + [app("a7")])
        let (checked, problems) = s.checked(nowMs: 1000)
        #expect(checked.apps.map(\.name) == Array(names.prefix(SavedState.maxApps)), "the first of each name, in order, up to the cap")
        #expect(problems == ["3 app record(s) repeating an earlier app's name left out",
                             "\(SavedState.maxApps + 50) apps: the 50 past the first \(SavedState.maxApps) left out"])
    }

    @Test func workerRecordsPastTheInstanceCapAreLeftOut() {
        let many = (0..<(CheckedNumber.maxInstances + 3)).map { Self.worker(id: $0, instance: $0 % CheckedNumber.maxInstances) }
        let (checked, problems) = Self.state(many).checked(nowMs: 1000)
        #expect(checked.apps[0].workers?.count == CheckedNumber.maxInstances)
        #expect(problems == ["web: \(CheckedNumber.maxInstances + 3) worker records: the ones past the first \(CheckedNumber.maxInstances) left out"])
    }

    @Test func listenerTagsMustBeOnesPmlWrites() {
        for good in ["l.1.0.", "l.deadbeef01234567.42.", KeeperTag.listener(generation: KeeperTag.generation(.max), id: Int.max)] {
            #expect(KeeperTag.isListener(good), "\(good)")
        }
        for bad in ["w.", "l.", "l.1.", "l.1.0", "l.1.0.s0.", "w.123.ipc", "l.1.0.x", "l.G.0.", "l.1.-1.", "l.1.0..", "l.12345678901234567.0.",
                    "l.1.12345678901234567890.", "control", "", "l.1.٣."] {
            #expect(!KeeperTag.isListener(bad), "\(bad)")
        }
        var s = Self.state([Self.worker()])
        s.apps[0].listeners = ["w.", "l.1.0.", "w.4321.ipc", "l.1.0.", "l.2.0."].map {
            SavedListener(tag: $0, address: .tcp(host: nil, port: 8080), requestedPort: nil)
        }
        let (checked, problems) = s.checked(nowMs: 1000)
        #expect(checked.apps[0].listeners?.map(\.tag) == ["l.1.0.", "l.2.0."])
        #expect(problems.count == 3 && problems[0] == #"web: listener tag "w." is not one pml writes, or appears twice; listener left out"#, "\(problems)")
    }
}
