import PMLCore
import Testing

@Suite("Turn batches")
struct TurnBatchTests {
    @Test("N items in one turn: one flush is arranged and takes them all in order; the next item starts a new batch")
    func oneFlushPerTurn() {
        var batch = TurnBatch<Int>()
        var flushes = 0
        for i in 1...50 where batch.add(i) { flushes += 1 }
        #expect(flushes == 1)
        let first = batch.take()
        #expect(first == Array(1...50))
        #expect(batch.isEmpty)
        let startsAgain = batch.add(51), second = batch.add(52)
        #expect(startsAgain, "a new turn's first item arranges its own flush")
        #expect(!second)
        let next = batch.take()
        #expect(next == [51, 52])
    }
}
