// pml-yaml FILE: reads a YAML ecosystem file and writes its data as JSON to fd 3, as pml's node
// evaluator does for .js files; a failure is one marked line on stderr and exit status 3.
// A separate program because Yams brings full Foundation: the pml binary (and so the daemon) stays
// without it.

import Foundation
import PMLCore
import Yams

/// Aliases repeat what they name: a few lines of anchors can stand for billions of values.
let maxValues = 1_000_000
let maxDepth = 64

struct Failure: Error { var message: String }

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("\npml-import-error\t\t\(message)\n".utf8))
    exit(3)
}

/// A YAML node as data: scalars typed by YAML's core schema, merge keys (`<<: *defaults`) applied,
/// as PM2's js-yaml reads them.
func value(of node: Node, depth: Int, budget: inout Int) throws -> ScriptValue {
    if depth > maxDepth { throw Failure(message: "nests deeper than \(maxDepth) levels") }
    budget -= 1
    if budget < 0 { throw Failure(message: "holds more than \(maxValues) values (aliases expanded)") }
    switch node {
    case .scalar(let scalar):
        switch node.tag.rawValue {
        case Tag.Name.null.rawValue: return .null
        case Tag.Name.bool.rawValue: return node.bool.map { .bool($0) } ?? .string(scalar.string)
        case Tag.Name.int.rawValue: return node.int.map { .int(Int64($0)) } ?? .string(scalar.string)
        case Tag.Name.float.rawValue: return node.float.map { .double($0) } ?? .string(scalar.string)
        default: return .string(scalar.string)
        }
    case .sequence(let seq):
        var items: [ScriptValue] = []
        for child in seq { items.append(try value(of: child, depth: depth + 1, budget: &budget)) }
        return .array(items)
    case .mapping(let map):
        var fields: [String: ScriptValue] = [:]
        var merged: [String: ScriptValue] = [:]
        for (k, v) in map {
            guard let key = k.string else { throw Failure(message: "keys must be strings") }
            let item = try value(of: v, depth: depth + 1, budget: &budget)
            guard key == "<<", k.tag.rawValue == Tag.Name.merge.rawValue || k.tag.rawValue == Tag.Name.str.rawValue else {
                fields[key] = item
                continue
            }
            // The named mappings' keys, unless given here; earlier ones win.
            let sources: [ScriptValue]
            if case .array(let list) = item { sources = list } else { sources = [item] }
            for source in sources {
                guard case .object(let more) = source else { throw Failure(message: "\"<<\" merges mappings only") }
                merged.merge(more) { first, _ in first }
            }
        }
        return .object(merged.merging(fields) { _, explicit in explicit })
    default:
        throw Failure(message: "unsupported YAML node")
    }
}

let args = CommandLine.arguments
guard args.count == 2 else { fail("usage: pml-yaml FILE (started by pml)") }
guard let data = FileManager.default.contents(atPath: args[1]) else { fail("cannot read the file") }
let node: Node?
do {
    node = try Yams.compose(yaml: String(decoding: data, as: UTF8.self))
} catch {
    fail("not valid YAML: \(String(describing: error).split(separator: "\n").first ?? "")")
}
guard let node else { fail("the file is empty") }
do {
    var budget = maxValues
    let json = try JSONEncoder().encode(value(of: node, depth: 0, budget: &budget))
    try FileHandle(fileDescriptor: 3, closeOnDealloc: false).write(contentsOf: json)
    exit(0)
} catch let failure as Failure {
    fail(failure.message)
} catch {
    fail("\(error)")
}
