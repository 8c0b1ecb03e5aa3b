import FoundationEssentials
import Testing
@testable import PMLCore

@Suite struct HandoverTests {
    func parse(_ text: String) -> KeeperMessage? { KeeperMessage.parse(Array(text.utf8)[...]) }

    @Test func everyRecordRoundTrips() {
        let all: [KeeperMessage] = [
            .hold(tag: "w.123.ipc"), .drop(prefix: "w.123."), .hello, .up, .bye, .update, .reopenLog, .held(tag: "l.9.0"), .end,
            .exit(pid: 42, code: 3, signal: nil), .exit(pid: 43, code: nil, signal: 9),
        ]
        for m in all { #expect(parse(m.encoded) == m, "\(m.encoded)") }
        #expect(KeeperMessage.hold(tag: "x").carriesFD && KeeperMessage.held(tag: "x").carriesFD)
        #expect(!KeeperMessage.drop(prefix: "x").carriesFD && !KeeperMessage.exit(pid: 1, code: 0, signal: nil).carriesFD)
    }

    @Test func tagsMayHoldSpacesButNotNewlines() {
        #expect(parse("hold l.1.2 with space") == .hold(tag: "l.1.2 with space"))
        #expect(parse("hold a\nb") == nil)
        #expect(parse("hold a\0b") == nil)
        #expect(parse("hold " + String(repeating: "x", count: 257)) == nil)
        #expect(parse(String(repeating: "y", count: KeeperMessage.maxBytes + 1)) == nil)
    }

    @Test func malformedRecordsAreRefused() {
        for bad in ["", "hold", "hold ", "drop", "drop ", "hello there", "bye now", "end ", "reopen-log now", "held", "nonsense",
                    "exit", "exit 1 2", "exit 0 1 -", "exit -5 1 -", "exit 7 - -", "exit 7 1 9", "exit x 1 -",
                    "exit 7 99999999999 -", "exit 7 1 - extra"] {
            #expect(parse(bad) == nil, "\(bad.debugDescription)")
        }
    }

    @Test func tagsOfAWorkerShareItsPrefix() {
        let prefix = KeeperTag.worker(pid: 12)
        #expect([KeeperTag.ipc(pid: 12), KeeperTag.out(pid: 12), KeeperTag.err(pid: 12), KeeperTag.handoff(pid: 12), KeeperTag.reclaim(pid: 12)].allSatisfy { $0.hasPrefix(prefix) })
        #expect(!KeeperTag.ipc(pid: 123).hasPrefix(prefix), "pid 12's prefix does not catch pid 123")
        #expect(KeeperTag.reclaimPID(KeeperTag.reclaim(pid: 12)) == 12)
        #expect([KeeperTag.ipc(pid: 12), KeeperTag.handoff(pid: 12), "w..rcl", "w.-3.rcl", "w.x.rcl", "l.ab.1.", "w.12.rclx"].allSatisfy { KeeperTag.reclaimPID($0) == nil }, "only a reclaim end's tag names a pid")
        let (a, b) = (KeeperTag.generation(0xdead_beef_0000_0001), KeeperTag.generation(.max))
        #expect(a == "deadbeef00000001" && b == "ffffffffffffffff")
        #expect(KeeperTag.listener(generation: a, id: 1) == "l.deadbeef00000001.1.")
        #expect(KeeperTag.listener(generation: a, id: 1) != KeeperTag.listener(generation: b, id: 1))
        #expect(!KeeperTag.listener(generation: a, id: 10).hasPrefix(KeeperTag.listener(generation: a, id: 1)),
                "dropping listener 1 leaves listener 10")
        #expect(KeeperMessage.parse(ArraySlice(KeeperMessage.hold(tag: KeeperTag.slot(listener: KeeperTag.listener(generation: b, id: Int.max), slot: 1023)).encoded.utf8))
                != nil, "the longest tag fits a record")
    }

    @Test func predecessorRoundTrips() {
        let p = Predecessor(pid: 1234, endedAtMs: 1_790_000_000_123, updated: false)
        #expect(Predecessor.parse(p.encoded) == p)
        #expect(Predecessor.parse(Predecessor(pid: 5, endedAtMs: 1, updated: true).encoded)?.updated == true)
        for bad in ["", "1234", "0 1 died", "1 x died", "1 2 maybe", "1 2 died extra"] { #expect(Predecessor.parse(bad) == nil, "\(bad)") }
    }

    @Test func startTimeIsField22EvenWithParenthesesInTheName() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 123 45 rest of line\n"
        #expect(procStartTime(stat: Array(stat.utf8)) == 987654)
        #expect(procStartTime(stat: Array("4242 (x) S 1 2".utf8)) == nil)
        #expect(procStartTime(stat: Array("garbage".utf8)) == nil)
    }

    @Test func stateWithoutKeeperFieldsStillDecodes() throws {
        let old = #"{"version":1,"daemon_pid":7,"apps":[{"name":"a","instances":1,"running":true,"start":{"env":{},"client_env":{},"client_cwd":"/"}}]}"#
        let state = try JSONDecoder().decode(SavedState.self, from: Data(old.utf8))
        #expect(state.keeperPID == nil && state.apps[0].workers == nil && state.apps[0].listeners == nil)
        var new = state
        new.keeperPID = 9
        new.apps[0].workers = [SavedWorker(id: 0, instance: 0, pid: 100, startTime: 55, startedAtMs: 1000, status: .online,
                                           restarts: 2, unstableRestarts: 0, backoffStep: 1, listening: ["l.7.0"], dispatched: 10)]
        new.apps[0].listeners = [SavedListener(tag: "l.7.0", address: .tcp(host: "127.0.0.1", port: 8080), requestedPort: 8080)]
        let back = try JSONDecoder().decode(SavedState.self, from: JSONEncoder().encode(new))
        #expect(back == new)
    }
}
