import PMLCore
import Testing

@Suite("Evaluations of an app file")
struct EvaluationsTests {
    @Test("an evaluation ends with its last table, however many newer ones are bound; an unused one ends when its tables go")
    func lifetimes() {
        var e = Evaluations<String>()
        let start = e.begin()
        let over = e.finished(start, tables: ["a1", "b1"])
        #expect(!over)

        // A reload of a alone: its new table bound, b's released unused; b stays on the first
        // evaluation, whose timers b's hooks read: it ends only when b1 goes too.
        let reload = e.begin()
        var ended = [e.finished(reload, tables: ["a2", "b2"]) ? reload : nil, e.dropped("b2"), e.dropped("a1")]
        #expect(ended == [nil, nil, nil], "b1 is still bound: the first evaluation goes on")
        ended = [e.dropped("b1")]
        #expect(ended == [start], "b reloaded too: the first evaluation ends with its last table")

        // A reload of both apps from one evaluation: the older one ends when its last table is replaced.
        let both = e.begin()
        ended = [e.finished(both, tables: ["a3", "b3"]) ? both : nil, e.dropped("a2")]
        #expect(ended == [nil, reload], "a2 was the reload's last table")

        // A vetoed reload: its only table released unused, so it ends; the one in use goes on.
        let vetoed = e.begin()
        ended = [e.finished(vetoed, tables: ["a4"]) ? vetoed : nil, e.dropped("a4")]
        #expect(ended == [nil, vetoed])

        // A file that failed or returned no table is over at once; unknown refs change nothing;
        // a table dropped twice ends nothing the second time.
        let failed = e.begin()
        let failedOver = e.finished(failed, tables: [])
        #expect(failedOver)
        ended = [e.dropped("unknown"), e.dropped("a4"), e.dropped("a3"), e.dropped("b3")]
        #expect(ended == [nil, nil, nil, both])
    }
}
