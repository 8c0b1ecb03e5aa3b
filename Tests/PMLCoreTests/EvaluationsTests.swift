import PMLCore
import Testing

@Suite("Evaluations of an app file")
struct EvaluationsTests {
    @Test("a reload's evaluation, once bound, ends the older one's timers; an unused one ends when its tables go")
    func lifetimes() {
        var e = Evaluations<String>()
        var ended: [Int?] = []
        let start = e.begin()
        ended.append(e.finished(start, tables: ["a1", "b1"]) ? start : nil)
        ended.append(e.bound("a1"))
        ended.append(e.bound("b1"))
        #expect(ended == [nil, start, nil], "the first bound evaluation; the same one again ends nothing")

        // A reload of a: its table bound, b's released unused; b stays bound to the first.
        let reload = e.begin()
        ended = [e.finished(reload, tables: ["a2", "b2"]) ? reload : nil, e.dropped("b2"), e.bound("a2"),
                 e.dropped("a1"), e.dropped("b1")]
        #expect(ended == [nil, nil, reload, nil, start], "a newer bound evaluation ends those before it; the first ends with its last table")

        // A vetoed reload: its only table released unused, so it ends; binding the older one ends nothing.
        let vetoed = e.begin()
        ended = [e.finished(vetoed, tables: ["a3"]) ? vetoed : nil, e.dropped("a3"), e.bound("a2")]
        #expect(ended == [nil, vetoed, nil])

        // A file that failed or returned no table is over at once; unknown refs change nothing.
        let failed = e.begin()
        let over = e.finished(failed, tables: [])
        ended = [e.dropped("unknown"), e.bound("unknown")]
        #expect(over && ended == [nil, nil])
    }
}
