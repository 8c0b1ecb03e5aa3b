import PMLCore
import Testing

@Suite("Script deadlines")
struct ScriptDeadlinesTests {
    @Test("a decision waits a little past one call's budget; a call is stuck past that plus a margin of CPU, or ten times that in wall time")
    func timeouts() {
        let t = ScriptTimeouts(callBudgetMs: 2000)
        #expect(t.decisionMs == 2500)
        #expect(t.stuckAfterMs == 3000)
        #expect(t.stuckAfterWallMs == 30_000)
        #expect(t.evaluationMs == 30_000, "an app file or plugin may take long to load on a busy machine: no app waits for it")
        #expect(!t.isStuck(busyMs: 2000, cpuMs: 2000), "a call at its budget is not stuck")
        #expect(!t.isStuck(busyMs: 3000, cpuMs: 3000))
        #expect(t.isStuck(busyMs: 3001, cpuMs: 3001), "only a C call can burn this much CPU")
        #expect(!t.isStuck(busyMs: 20_000, cpuMs: 2900), "a state starved of CPU on a busy machine is not stuck")
        #expect(!t.isStuck(busyMs: 30_000, cpuMs: 0))
        #expect(t.isStuck(busyMs: 30_001, cpuMs: 0), "a call that waits this long is lost (a deadlock)")
        #expect(ScriptTimeouts(callBudgetMs: 0).callBudgetMs == 1, "a budget is at least 1 ms")
    }

    @Test("an answer is taken once; an expired or dropped request cannot be answered any more")
    func answers() {
        var p = PendingAnswers<String, String>()
        let a = p.add(deadline: 100, owner: "web", "a")
        let b = p.add(deadline: 50, owner: "api", "b")
        #expect(a != b)
        #expect(p.nextDeadline == 50)
        #expect(p.answer(a) == "a")
        #expect(p.answer(a) == nil, "answered twice")
        #expect(p.expire(now: 49).isEmpty)
        #expect(p.expire(now: 50) == ["b"])
        #expect(p.answer(b) == nil, "a late answer finds nothing: the default already applied")
        #expect(p.nextDeadline == nil && p.count == 0)
    }

    @Test("expiry and dropping come oldest first and touch only what is due or owned")
    func order() {
        var p = PendingAnswers<Int, String>()
        let ids = (0..<5).map { i in p.add(deadline: 100 - i, owner: i % 2 == 0 ? "even" : "odd", i) }
        #expect(p.waits(on: "odd"))
        #expect(p.drop(owner: "odd") == [1, 3], "in the order they were asked")
        #expect(!p.waits(on: "odd"))
        #expect(p.expire(now: 100) == [0, 2, 4], "oldest first, whatever their deadlines")
        #expect(ids.allSatisfy { p.answer($0) == nil })
    }

    @Test("a deleted app's requests can be dropped alone: the other app of the same state keeps waiting")
    func dropWhere() {
        struct Asker: Hashable { let state: String; let app: String? }
        var p = PendingAnswers<Int, Asker>()
        let web = p.add(deadline: 10, owner: Asker(state: "f.lua", app: "web"), 1)
        _ = p.add(deadline: 10, owner: Asker(state: "f.lua", app: "api"), 2)
        _ = p.add(deadline: 10, owner: Asker(state: "f.lua", app: nil), 3)
        #expect(p.owner(of: web)?.app == "web")
        #expect(p.drop { $0.app == "web" } == [1])
        #expect(p.owner(of: web) == nil)
        #expect(!p.waits { $0.app == "web" } && p.waits { $0.state == "f.lua" })
        #expect(p.drop { $0.state == "f.lua" } == [2, 3])
        #expect(p.count == 0)
    }
}
