import CLuaShim
import PMLCore

/// Encodes Swift values for the C decoder (`push_value` in cluashim.c), so that every Lua call
/// that may raise (allocation included) runs in C, never in a Swift frame.
struct ValueEncoder {
    private var bytes: [UInt8] = []

    /// A list of values: a count, then each value.
    static func list(_ values: [ScriptValue]) -> [UInt8] {
        var encoder = ValueEncoder()
        encoder.count(values.count)
        for value in values { encoder.value(value, depth: 1) }
        return encoder.bytes
    }

    private mutating func value(_ value: ScriptValue, depth: Int) {
        switch value {
        case .null, .function: tag(PML_ENC_NIL)
        case .bool(let b): tag(b ? PML_ENC_TRUE : PML_ENC_FALSE)
        case .int(let i): tag(PML_ENC_INT); raw(i)
        case .double(let d): tag(PML_ENC_DOUBLE); raw(d)
        case .string(let s): tag(PML_ENC_STRING); string(s)
        case .array(let items):
            guard depth < Int(PML_ENC_MAX_DEPTH) else { return tag(PML_ENC_NIL) }
            tag(PML_ENC_ARRAY)
            count(items.count)
            for item in items { self.value(item, depth: depth + 1) }
        case .object(let fields):
            guard depth < Int(PML_ENC_MAX_DEPTH) else { return tag(PML_ENC_NIL) }
            tag(PML_ENC_OBJECT)
            count(fields.count)
            for (key, item) in fields {
                string(key)
                self.value(item, depth: depth + 1)
            }
        }
    }

    private mutating func tag(_ t: Int) { bytes.append(UInt8(t)) }
    private mutating func count(_ n: Int) { raw(UInt32(truncatingIfNeeded: n)) }
    private mutating func raw<T>(_ x: T) { withUnsafeBytes(of: x) { bytes.append(contentsOf: $0) } }
    private mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        count(utf8.count)
        bytes.append(contentsOf: utf8)
    }
}

/// Reads Lua values into `ScriptValue`s with calls that cannot raise (raw access, no metamethods,
/// no number-to-string conversion on the stack).
struct ValueReader {
    /// Tables nested deeper than this read as `.null`; C refuses messages that nest deeper.
    static let maxDepth = Int(PML_MESSAGE_MAX_DEPTH)

    let L: OpaquePointer
    /// Tables on the current path: a cycle reads as `.null`.
    private var visiting: Set<UnsafeRawPointer> = []
    /// Values left to read: shared subtables can make a small table expand exponentially.
    private var remaining = 1_000_000

    private init(_ L: OpaquePointer) { self.L = L }

    /// The value at `index`.
    static func value(_ L: OpaquePointer, at index: Int32) -> ScriptValue {
        var reader = ValueReader(L)
        return reader.read(index)
    }

    /// The string at `index`, which must be a string (not a number: converting would change the stack).
    static func string(_ L: OpaquePointer, at index: Int32) -> String {
        var length = 0
        guard let p = lua_tolstring(L, index, &length) else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: p, count: length), as: UTF8.self)
    }

    private mutating func read(_ index: Int32, depth: Int = 1) -> ScriptValue {
        switch lua_type(L, index) {
        case LUA_TBOOLEAN: return .bool(lua_toboolean(L, index) != 0)
        case LUA_TNUMBER:
            if lua_isinteger(L, index) != 0 { return .int(Int64(lua_tointegerx(L, index, nil))) }
            return .double(lua_tonumberx(L, index, nil))
        case LUA_TSTRING: return .string(Self.string(L, at: index))
        case LUA_TFUNCTION: return .function
        case LUA_TTABLE: return table(index, depth: depth)
        default: return .null
        }
    }

    private mutating func table(_ index: Int32, depth: Int) -> ScriptValue {
        let index = lua_absindex(L, index)
        guard depth <= Self.maxDepth, let identity = lua_topointer(L, index),
              !visiting.contains(identity), lua_checkstack(L, 3) != 0 else { return .null }
        visiting.insert(identity)
        defer { visiting.remove(identity) }

        var numbered: [Int64: ScriptValue] = [:]
        var named: [String: ScriptValue] = [:]
        lua_pushnil(L)
        while lua_next(L, index) != 0 { // key at -2, value at -1
            remaining -= 1
            let value = remaining > 0 ? read(-1, depth: depth + 1) : .null
            switch lua_type(L, -2) {
            case LUA_TNUMBER:
                if lua_isinteger(L, -2) != 0 { numbered[Int64(lua_tointegerx(L, -2, nil))] = value }
                else { named[String(lua_tonumberx(L, -2, nil))] = value }
            case LUA_TSTRING: named[Self.string(L, at: -2)] = value
            default: break // booleans, tables and functions as keys have no place in a ScriptValue
            }
            pml_pop(L, 1)
        }
        let n = Int64(numbered.count)
        if named.isEmpty, n > 0, numbered.keys.allSatisfy({ (1...n).contains($0) }) {
            return .array((1...n).map { numbered[$0]! })
        }
        for (key, value) in numbered { named[String(key)] = value }
        return .object(named)
    }
}
