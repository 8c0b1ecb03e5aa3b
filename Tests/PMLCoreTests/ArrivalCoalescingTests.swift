import PMLCore
import Testing

@Suite("Arrival coalescing")
struct ArrivalCoalescingTests {
    /// Feeds turns given as (µs since the previous turn, connections accepted), the clock `now`
    /// going on from one call to the next; returns each hold.
    private func holds(_ c: inout ArrivalCoalescing, _ now: inout Int, _ turns: [(gap: Int, accepted: Int)]) -> [Int] {
        turns.map { t in
            now += t.gap
            return c.turn(nowUs: now, accepted: t.accepted)
        }
    }

    @Test("a first connection, an isolated one, and connections at up to 1,000 a second are never held")
    func lightLoadIsNeverHeld() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        #expect(c.turn(nowUs: 5, accepted: 1) == 0, "the first connection of a daemon")
        for gap in [1001, 1500, 2_000, 25_000, 1_000_000] {
            var c = ArrivalCoalescing()
            #expect(holds(&c, &now, Array(repeating: (gap, 1), count: 200)).allSatisfy { $0 == 0 }, "one turn every \(gap) µs")
            // Even bursts of several connections per turn: a busy turn needs a busy neighbour.
            var b = ArrivalCoalescing()
            #expect(holds(&b, &now, Array(repeating: (gap, 6), count: 200)).allSatisfy { $0 == 0 }, "bursts every \(gap) µs")
        }
    }

    @Test("three accept turns within 1 ms of each other start holding; a hold that gathers five or more goes on, one sparse hold alone does not stop it")
    func sustainedArrivalsAreHeld() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        #expect(holds(&c, &now, [(50_000, 1), (400, 1), (400, 1)]) == [0, 0, 250])
        #expect(c.holding == 250)
        #expect(holds(&c, &now, [(260, 2), (300, 5), (251, 64)]) == [250, 250, 250])
        // The third busy turn counts from the first of them: a gap over 1 ms in between restarts the count.
        var d = ArrivalCoalescing(growth: 1)
        #expect(holds(&d, &now, [(100, 1), (100, 1), (1001, 1), (100, 1), (100, 1)]) == [0, 0, 0, 0, 250])
    }

    @Test("two held turns in a row that find fewer than five each stop holding, and holding then needs six busy turns; one alone does not")
    func sparseHoldStops() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        #expect(holds(&c, &now, [(0, 1), (200, 1), (200, 1), (300, 4), (300, 5), (300, 1), (300, 4)]) == [0, 0, 250, 250, 250, 250, 0])
        #expect(c.holding == 0)
        #expect(c.needed == 6)
        #expect(holds(&c, &now, Array(repeating: (200, 3), count: 6)) == [0, 0, 0, 0, 0, 250])
    }

    @Test("2 to 4 clients sending requests back to back on new connections are held a few times, then hardly ever: a hold never gathers five of them, however long")
    func aFewClientsAreNotHeld() {
        for growth in [1, 4] {
            for clients in 2...4 {
                var now = 1_000_000
                var c = ArrivalCoalescing(growth: growth)
                // Every 100 µs a turn with one of them; a held turn finds all of them at most.
                var held = 0, longest = 0
                for _ in 0..<10_000 {
                    now += c.holding > 0 ? c.holding : 100
                    let hold = c.turn(nowUs: now, accepted: c.holding > 0 ? clients : 1)
                    if hold > 0 { held += 1 }
                    longest = max(longest, hold)
                }
                // About a second of this: 3, 6, …, 768, then 1024 busy turns before each try, two held
                // turns a try (9 tries to reach 1024, then 8 of 1024): at most 0.4 % of turns.
                #expect(held <= 40, "\(clients) clients: \(held) held turns of 10000")
                #expect(longest == 250, "\(clients) clients: a hold of \(longest) µs")
                #expect(c.needed == 1024)
            }
        }
    }

    @Test("after a hold, what was queued when the turn began decides, not what the turn accepted: a slow turn takes in what a few fast clients bring during it")
    func gatheredDecides() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        _ = holds(&c, &now, [(0, 1), (200, 1), (200, 1)])
        #expect(c.holding == 250)
        now += 300
        #expect(c.turn(nowUs: now, accepted: 30, gathered: 4) == 250, "one sparse turn goes on")
        now += 300
        #expect(c.turn(nowUs: now, accepted: 30, gathered: 4) == 0, "two sparse turns end it, whatever was accepted")
        #expect(c.needed == 6)
        var d = ArrivalCoalescing(growth: 1)
        _ = holds(&d, &now, [(5000, 1), (200, 1), (200, 1)])
        now += 300
        #expect(d.turn(nowUs: now, accepted: 5, gathered: 5) == 250)
        now += 300
        #expect(d.turn(nowUs: now, accepted: 2, gathered: nil) == 250, "unknown: the accepted count, one sparse turn")
        now += 300
        #expect(d.turn(nowUs: now, accepted: 7, gathered: nil) == 250)
        #expect(d.needed == 3)
    }

    @Test("a client sending one request at a time within 1 ms is held ever more rarely: twice as many busy turns after each hold that gathered nothing, up to 1024; a hold that gathers a batch starts over")
    func oneAtATimeBacksOff() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        var heldAt: [Int] = []
        for i in 0..<4000 where holds(&c, &now, [(400, 1)]) == [250] { heldAt.append(i) }
        // 3 busy turns (the third holds), one more held, one sparse that stops; 6 busy; 12… then 1024.
        #expect(heldAt.prefix(6) == [2, 3, 10, 11, 24, 25])
        #expect(c.needed == 1024)
        #expect(heldAt.count < 40, "held \(heldAt.count) of 4000")
        let last = heldAt.suffix(4)
        #expect(Array(last).count == 4 && last[last.startIndex + 2] - last[last.startIndex] == 1026, "every 1024 busy turns at most: \(last)")
        // Now a load that fills batches: back to three busy turns once a hold gathers five.
        var busy = ArrivalCoalescing(growth: 1)
        _ = holds(&busy, &now, [(0, 1), (200, 1), (200, 1), (300, 1), (300, 1)])
        #expect(busy.needed == 6)
        _ = holds(&busy, &now, Array(repeating: (200, 1), count: 6))
        #expect(busy.holding == 250)
        #expect(holds(&busy, &now, [(300, 5)]) == [250])
        #expect(busy.needed == 3)
    }

    @Test("a turn that accepted nothing changes nothing and holds nothing")
    func emptyTurns() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        _ = holds(&c, &now, [(0, 1), (200, 1), (200, 1)])
        let before = c
        #expect(c.turn(nowUs: 99, accepted: 0) == 0)
        #expect(c == before)
        #expect(c.turn(nowUs: 1_000_400 + 250, accepted: 2) == 250, "the held turn is still the next one with connections")
    }

    @Test("load that stops and comes back as a burst after a quiet spell is not held")
    func quietSpellResets() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        _ = holds(&c, &now, [(0, 1), (200, 1), (200, 1)])
        #expect(c.holding == 250)
        // 250 µs of hold + 1 ms: still the held turn. A µs more: a fresh start.
        var near = c
        #expect(near.turn(nowUs: 1_000_400 + 1250, accepted: 2) == 250)
        #expect(holds(&c, &now, [(1251, 8), (300, 8)]) == [0, 0])
        #expect(c.holding == 0)
    }

    @Test("a clock that goes backwards counts as a quiet spell, never as load")
    func clockBackwards() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        #expect(holds(&c, &now, [(0, 1), (-10, 1), (-10, 1), (-10, 1)]) == [0, 0, 0, 0])
        _ = holds(&c, &now, [(100, 1), (100, 1)])
        #expect(c.holding == 250)
        #expect(c.turn(nowUs: 0, accepted: 5) == 0)
        #expect(c.holding == 0)
    }

    @Test("holdUs 0 turns it off; absurd settings are clamped")
    func settings() {
        var now = 1_000_000
        var off = ArrivalCoalescing(holdUs: 0)
        #expect(holds(&off, &now, Array(repeating: (10, 10), count: 100)).allSatisfy { $0 == 0 })
        var c = ArrivalCoalescing(holdUs: -5, busyGapUs: -1, busyTurns: 0, minBatch: -3, sparseTurns: -1, maxBusyTurns: -9)
        #expect(c.holdUs == 0 && c.busyGapUs == 0 && c.busyTurns == 1 && c.minBatch == 1 && c.sparseTurns == 1 && c.maxBusyTurns == 1)
        #expect(c.turn(nowUs: 1, accepted: 1) == 0)
        var one = ArrivalCoalescing(holdUs: 100, busyTurns: 1)
        #expect(one.turn(nowUs: 1, accepted: 1) == 100, "busyTurns 1: the first turn is enough")
    }

    @Test("the back-off is forgotten over 1 s after it last grew, not before, with or without turns meanwhile")
    func backOffRecovers() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        _ = holds(&c, &now, [(0, 1), (200, 1), (200, 1), (300, 1), (300, 1)])
        #expect(c.needed == 6)
        _ = holds(&c, &now, [(1_000_000, 1)])
        #expect(c.needed == 6, "1 s exactly is not quiet enough")
        _ = holds(&c, &now, [(1_000_001, 1)])
        #expect(c.needed == 3)
        #expect(holds(&c, &now, [(200, 1), (200, 1)]) == [0, 250], "three busy turns hold again")
        // Not only after a quiet spell: turns that go on (here every 2 ms) forget it too, 1 s after
        // it last grew, so a heavy load that follows a light one is held again soon.
        var d = ArrivalCoalescing(growth: 1)
        _ = holds(&d, &now, [(0, 1), (200, 1), (200, 1), (300, 1), (300, 1)])
        #expect(d.needed == 6)
        _ = holds(&d, &now, Array(repeating: (2000, 1), count: 500))
        #expect(d.needed == 6, "1 s after it grew: not yet")
        _ = holds(&d, &now, [(2000, 1)])
        #expect(d.needed == 3)
    }

    @Test("a turn that stopped because no worker was free neither counts as busy nor ends a hold (pml holds the listener for the workers' credits itself)")
    func starvedTurnsNeitherCountNorEndHolds() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        // Every turn ends with all workers busy, however fast: coalescing never holds.
        for _ in 0..<1000 { now += 100; #expect(c.turn(nowUs: now, accepted: 2, starved: true) == 0) }
        #expect(c.holding == 0)
        // Over 10 ms later (saturation over), holding, then a starved turn: the hold stays for the turn after it.
        #expect(holds(&c, &now, [(20_000, 1), (100, 1), (100, 1), (260, 5)]) == [0, 0, 250, 250])
        now += 260
        #expect(c.turn(nowUs: now, accepted: 4, starved: true) == 0)
        #expect(c.holding == 250 && c.needed == 3)
        #expect(holds(&c, &now, [(260, 5)]) == [250], "the next turn is a held one")
        // Two busy turns, a starved one: the starved one ended nothing, and the next turn holds
        // (the workers are saturated: `saturatedWorkersAreHeldFor`).
        var d = ArrivalCoalescing()
        #expect(holds(&d, &now, [(5000, 1), (100, 1)]) == [0, 0])
        now += 100
        #expect(d.turn(nowUs: now, accepted: 0, starved: true) == 0)
        #expect(holds(&d, &now, [(100, 1)]) == [250])
    }

    @Test("for 10 ms after a starved turn the workers count as saturated: holding starts with the first turn, and holds that gather few go on; after that, the usual rules")
    func saturatedWorkersAreHeldFor() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        #expect(c.turn(nowUs: now, accepted: 3, starved: true) == 0)
        #expect(holds(&c, &now, [(2000, 1)]) == [250], "a lone turn 2 ms later holds")
        #expect(holds(&c, &now, [(300, 1), (300, 0), (300, 1), (300, 2)]) == [250, 0, 250, 250], "few per hold: not sparse")
        now += 10_000
        #expect(holds(&c, &now, [(100, 1), (300, 1)]) == [0, 0], "over 10 ms later: a turn long after the hold, then the busy count")
        var d = ArrivalCoalescing(growth: 1)
        #expect(d.turn(nowUs: now, accepted: 3, starved: true) == 0)
        #expect(holds(&d, &now, [(10_001, 1)]) == [0], "10 ms and 1 µs later: not saturated")
    }

    @Test("a turn of a listener some NODE_HANDLE worker serves is never held: it ends a hold and the busy count starts over, like a starved one")
    func unholdableTurnsNeverHold() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        for _ in 0..<1000 { now += 100; #expect(c.turn(nowUs: now, accepted: 8, holdable: false) == 0) }
        #expect(c.holding == 0 && c.needed == 3)
        #expect(holds(&c, &now, [(100, 1), (100, 1), (100, 1), (260, 3)]) == [0, 0, 250, 250])
        now += 260
        #expect(c.turn(nowUs: now, accepted: 4, holdable: false) == 0, "a worker on NODE_HANDLE joined")
        #expect(c.holding == 0 && c.needed == 3, "no back-off: the hold did not fail")
        #expect(holds(&c, &now, [(100, 1), (100, 1), (100, 1)]) == [0, 0, 250], "three busy turns again")
    }

    /// Held turns, each right after the hold before it ended, gathering `gathered(hold)`: the holds.
    private func heldRun(_ c: inout ArrivalCoalescing, _ now: inout Int, turns: Int, gathered: (Int) -> Int) -> [Int] {
        (0..<turns).map { _ in
            let hold = c.holding
            now += hold + 10
            let n = gathered(hold)
            return c.turn(nowUs: now, accepted: n, gathered: n)
        }
    }

    /// Starts holding (three busy turns): the hold is holdUs.
    private func startHolding(_ c: inout ArrivalCoalescing, _ now: inout Int) {
        #expect(holds(&c, &now, [(50_000, 1), (100, 1), (100, 1)]).last == c.holdUs)
    }

    @Test("arrivals that do not wait for the hold (twice as long a hold gathers twice as much): it doubles every 8 held turns up to 4 x holdUs, and stays there")
    func holdGrowsWhileTheRateHolds() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        #expect(c.longestHoldUs == 1000)
        startHolding(&c, &now)
        // 20 connections per ms, whatever the hold.
        let run = heldRun(&c, &now, turns: 40, gathered: { $0 / 50 })
        #expect(Array(run[0..<7]) == Array(repeating: 250, count: 7))
        #expect(Array(run[7..<15]) == Array(repeating: 500, count: 8), "\(run)")
        #expect(Array(run[15...]).allSatisfy { $0 == 1000 }, "\(run)")
        // Kept at 80 % of the rate: 16 per ms at 1000 µs.
        #expect(heldRun(&c, &now, turns: 24, gathered: { $0 * 16 / 1000 }).allSatisfy { $0 == 1000 })
    }

    @Test("arrivals that wait for the hold (a few clients, each waiting for its answer): a longer hold gathers no more, so it goes back and is tried again only after quietUs")
    func holdDoesNotGrowWhenClientsWaitForIt() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        startHolding(&c, &now)
        // Eight clients: eight connections per hold, however long.
        let run = heldRun(&c, &now, turns: 40, gathered: { _ in 8 })
        #expect(Array(run[0..<7]) == Array(repeating: 250, count: 7))
        #expect(Array(run[7..<15]) == Array(repeating: 500, count: 8), "tried: \(run)")
        #expect(Array(run[15...]).allSatisfy { $0 == 250 }, "back: \(run)")
        // Not tried again within quietUs (1 s) of the failed trial; tried again once it is over.
        let failedAt = now - 25 * 260
        var held = 0
        while now - failedAt <= 1_000_000 {
            held = heldRun(&c, &now, turns: 1, gathered: { _ in 8 })[0]
            if held != 250 { break }
        }
        #expect(held == 250, "no trial within 1 s")
        let later = heldRun(&c, &now, turns: 8, gathered: { _ in 8 })
        #expect(later.last == 500, "a trial after 1 s: \(later)")
    }

    @Test("a grown hold whose arrivals turn to waiting for it goes back down step by step to holdUs; holding that stops starts again at holdUs")
    func grownHoldComesBack() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        startHolding(&c, &now)
        _ = heldRun(&c, &now, turns: 16, gathered: { $0 / 50 })
        #expect(c.holding == 1000)
        // Six clients now: six per hold (under 80 % of the rate each shorter hold had).
        let run = heldRun(&c, &now, turns: 24, gathered: { _ in 6 })
        #expect(Array(run[0..<7]).allSatisfy { $0 == 1000 } && Array(run[7..<15]).allSatisfy { $0 == 500 }, "\(run)")
        #expect(Array(run[15...]).allSatisfy { $0 == 250 }, "\(run)")
        now += 5000
        #expect(c.turn(nowUs: now, accepted: 3) == 0, "a turn long after the hold: holding stops")
        startHolding(&c, &now)
        #expect(c.holding == 250)
        // Starved: holding stops too, and starts again at holdUs.
        _ = heldRun(&c, &now, turns: 8, gathered: { $0 / 50 })
        #expect(c.holding == 250, "the trial that failed was within 1 s: none yet")
        now += 100
        #expect(c.turn(nowUs: now, accepted: 3, starved: true) == 0)
        startHolding(&c, &now)
        #expect(c.holding == 250)
    }

    @Test("a longer hold is judged against the base hold's rate, not the next shorter one's: losses of a few per cent a step do not add up")
    func judgedAgainstTheBase() {
        var now = 1_000_000
        var c = ArrivalCoalescing()
        startHolding(&c, &now)
        // 5 per 250 µs; 9 per 500 µs (92 % of that rate); 15 per 1000 µs (77 % of it, 84 % of 500's).
        let run = heldRun(&c, &now, turns: 40, gathered: { [250: 5, 500: 9, 1000: 15][$0] ?? 0 })
        #expect(Array(run[7..<15]).allSatisfy { $0 == 500 } && Array(run[15..<23]).allSatisfy { $0 == 1000 }, "\(run)")
        #expect(Array(run[23...]).allSatisfy { $0 == 500 }, "back to 500 and kept there: \(run)")
    }

    @Test("growth 1 (or a holdUs that cannot double within maxHoldUs) never grows the hold")
    func holdGrowthBounded() {
        var now = 1_000_000
        var c = ArrivalCoalescing(growth: 1)
        startHolding(&c, &now)
        #expect(heldRun(&c, &now, turns: 40, gathered: { $0 / 50 + 5 }).allSatisfy { $0 == 250 })
        var d = ArrivalCoalescing(holdUs: 6000)
        #expect(d.longestHoldUs == ArrivalCoalescing.maxHoldUs)
        startHolding(&d, &now)
        #expect(heldRun(&d, &now, turns: 40, gathered: { $0 / 50 }).allSatisfy { $0 == 6000 })
        #expect(ArrivalCoalescing(holdUs: 3000).longestHoldUs == 10_000)
    }

    @Test("a hold is at most 10000 µs, however it is made")
    func holdIsBounded() {
        #expect(ArrivalCoalescing(holdUs: 1_000_000).holdUs == ArrivalCoalescing.maxHoldUs)
        #expect(ArrivalCoalescing.holdSetting("10001", max: ArrivalCoalescing.maxHoldUs).holdUs == 10_000)
    }

    @Test("PML_ACCEPT_HOLD_US: unset is 250 µs; 0 off; 0…10000 as given; out of range the nearest bound, garbage off, each with one line")
    func holdSetting() {
        func setting(_ text: String?) -> (Int, Bool) {
            let s = ArrivalCoalescing.holdSetting(text, max: 10_000)
            return (s.holdUs, s.problem != nil)
        }
        #expect(setting(nil) == (250, false), "on by default")
        #expect(setting("0") == (0, false))
        #expect(setting("250") == (250, false))
        #expect(setting("+10000") == (10_000, false))
        #expect(setting("20000") == (10_000, true))
        #expect(setting("99999999999999999999999") == (10_000, true))
        #expect(setting("-1") == (0, true))
        #expect(setting("-99999999999999999999999") == (0, true))
        for garbage in ["", "abc", "250us", " 250", "2.5", "-", "+", "٣"] {
            #expect(setting(garbage) == (0, true), "\(garbage)")
        }
        let long = ArrivalCoalescing.holdSetting(String(repeating: "x", count: 5000), max: 10_000).problem ?? ""
        #expect(long.count < 200, "one short line, whatever the value's length")
    }

    @Test("without epoll_pwait2 (holds would round up to 1 ms): off by default, said in one line; a value set still applies, said too; 0 says nothing")
    func holdSettingWithMillisecondTimeouts() {
        func setting(_ text: String?) -> (Int, String?) {
            let s = ArrivalCoalescing.holdSetting(text, max: 10_000, microsecondTimeouts: false)
            return (s.holdUs, s.problem)
        }
        #expect(setting(nil).0 == 0)
        #expect(setting(nil).1?.contains("1 ms") == true)
        #expect(setting("250").0 == 250)
        #expect(setting("250").1?.contains("1 ms") == true)
        #expect(setting("20000").0 == 10_000)
        #expect(setting("20000").1?.contains("over 10000") == true)
        #expect(setting("0") == (0, nil))
        #expect(setting("abc").0 == 0)
    }

    /// Every sequence of four turns over these gaps and counts, against what the rules allow
    /// (checked by hand, not with #expect per turn: 2.5 million sequences).
    /// One turn of the exhaustive walk: µs since the previous turn, connections accepted, and
    /// whether it stopped starved (`reset` 1) or its listener had a NODE_HANDLE server (2).
    private struct Step { var gap: Int; var accepted: Int; var reset = 0 }

    @Test("exhaustively, without growth: a hold is never over holdUs, and only follows three busy turns or held turns that did not twice in a row gather fewer than five, or any turn within 10 ms of a starved one; starved turns hold nothing and end nothing; NODE_HANDLE-served turns never hold and restart the count; the back-off ends quietUs after it last grew")
    func exhaustive() {
        let gaps = [-5, 0, 100, 250, 999, 1000, 1001, 1250, 1251, 5000]
        let counts = [0, 1, 2, 5]
        // reset 1: starved; 2: a NODE_HANDLE worker serves the listener.
        let resets = [100, 1250].flatMap { g in [Step(gap: g, accepted: 2, reset: 1), Step(gap: g, accepted: 0, reset: 1), Step(gap: g, accepted: 5, reset: 2)] }
        let steps = gaps.flatMap { g in counts.map { Step(gap: g, accepted: $0) } } + resets
        var checked = 0
        var wrong: [Step]?
        func check(_ turns: [Step], _ made: ArrivalCoalescing) -> Bool {
            var c = made
            var now = 1_000_000
            var busyRun = 0          // accept turns in a row within busyGapUs of the previous accept turn
            var sparseRun = 0        // held turns in a row that gathered fewer than minBatch
            var needed = made.busyTurns
            var lastAcceptAt: Int?
            var backedOffAt: Int?     // when needed last grew
            var lastStarvedAt: Int?
            for t in turns {
                now += t.gap
                let wasHolding = c.holding
                let h = c.turn(nowUs: now, accepted: t.accepted, starved: t.reset == 1, holdable: t.reset != 2)
                guard h == 0 || h == c.holdUs else { return false }
                if t.reset == 1 {
                    // Starved: no hold from coalescing, nothing counted, nothing ended.
                    guard h == 0, c.holding == wasHolding, c.needed == needed else { return false }
                    lastAcceptAt = now
                    lastStarvedAt = now
                    checked += 1
                    continue
                }
                if t.reset > 0 {
                    // Not busy: no hold, the counts start over, the back-off stays.
                    guard h == 0, c.holding == 0, c.needed == needed else { return false }
                    busyRun = 0
                    sparseRun = 0
                    lastAcceptAt = now
                    checked += 1
                    continue
                }
                if t.accepted == 0 {
                    guard h == 0 else { return false }
                    continue
                }
                // The back-off is forgotten quietUs after it last grew, or if the clock went back.
                if let t = backedOffAt, now - t > c.quietUs || now < t { needed = c.busyTurns; backedOffAt = nil }
                let gap = lastAcceptAt.map { now - $0 }
                let heldTurn = wasHolding > 0 && gap.map { $0 >= 0 && $0 <= wasHolding + c.busyGapUs } == true
                // Within saturatedUs of a starved turn: holding starts at once, nothing is sparse.
                let saturated = lastStarvedAt.map { now >= $0 && now - $0 <= ArrivalCoalescing.saturatedUs } ?? false
                busyRun = gap.map { $0 >= 0 && $0 <= c.busyGapUs } == true ? busyRun + 1 : 1
                if heldTurn {
                    // A held turn goes on holding unless it is the second sparse one in a row.
                    sparseRun = t.accepted >= c.minBatch || saturated ? 0 : sparseRun + 1
                    if t.accepted >= c.minBatch { needed = c.busyTurns; backedOffAt = nil }
                    guard (h > 0) == (sparseRun < c.sparseTurns) else { return false }
                    if h == 0 { busyRun = 0; sparseRun = 0; needed = min(needed * 2, c.maxBusyTurns); backedOffAt = now }
                } else {
                    sparseRun = 0
                    guard (h > 0) == (busyRun >= needed || saturated) else { return false }
                }
                guard c.needed == needed else { return false }
                lastAcceptAt = now
                checked += 1
            }
            return true
        }
        // The defaults, and shorter runs so that four turns also reach the end of a hold, and the
        // back-off its end (quietUs within the gaps walked).
        // Without growth (holds that grow are walked by the tests above).
        let settings = [ArrivalCoalescing(growth: 1), ArrivalCoalescing(busyTurns: 1, growth: 1),
                        ArrivalCoalescing(busyTurns: 1, sparseTurns: 1, maxBusyTurns: 3, quietUs: 1000, growth: 1)]
        for made in settings {
            for a in steps { for b in steps { for c in steps { for d in steps where wrong == nil {
                if !check([a, b, c, d], made) { wrong = [a, b, c, d] }
            } } } }
        }
        #expect(wrong == nil, "first sequence against the rules: \(String(describing: wrong))")
        #expect(checked > 3 * 4 * 3_000_000)
    }
}
