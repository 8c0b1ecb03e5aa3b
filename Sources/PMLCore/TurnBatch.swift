/// Items gathered during one turn of an event loop and handed over together after it, so the work
/// done per batch (the supervisor's snapshot for the script threads) is done once, however many
/// items came in that turn.
public struct TurnBatch<Item> {
    private var items: [Item] = []

    public init() {}

    /// Adds an item, in order; true when it starts a batch: the caller arranges one `take` after the turn.
    public mutating func add(_ item: Item) -> Bool {
        items.append(item)
        return items.count == 1
    }

    /// Everything gathered since the last take, in the order it was added.
    public mutating func take() -> [Item] {
        defer { items = [] }
        return items
    }

    public var isEmpty: Bool { items.isEmpty }
}
