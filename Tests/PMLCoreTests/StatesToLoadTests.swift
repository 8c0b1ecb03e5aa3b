import PMLCore
import Testing

@Suite("States to load again")
struct StatesToLoadTests {
    @Test("a state lost while no thread could start is loaded by the next thread started for it, once")
    func loadedByTheNextThread() {
        var s = StatesToLoad<String>()
        // Replaced, and the fresh thread started during the reload itself: nothing more to do.
        s.lose("a.lua")
        let duringReload = s.started("a.lua")
        s.loaded("a.lua")
        let later = s.started("a.lua")
        #expect(!duringReload && !later)

        // Replaced at the cap: no thread during the reload; the next one (a hook's) loads, once.
        s.lose("b.lua")
        s.loaded("b.lua")
        let first = s.started("b.lua"), second = s.started("b.lua")
        #expect(first && !second)

        // Its apps went away meanwhile: a later thread (a new start's) owes nothing.
        s.lose("c.lua")
        s.loaded("c.lua")
        s.forget("c.lua")
        let afterForget = s.started("c.lua")
        #expect(!afterForget)
    }
}
