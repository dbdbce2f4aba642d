// The README's Swift example, compiled and run by the test runner. Lines between the markers are pasted into the
// README as they are.

import Foundation
import ShoalDB

func readmeExample(directory: String) async throws -> [String] {
    var printed: [String] = []
    func print(_ items: Any...) { printed.append(items.map { "\($0)" }.joined(separator: " ")) }
    // README-BEGIN
    struct Todo: Codable { var id: String; var title: String; var done = false
        enum CodingKeys: String, CodingKey { case id = "_id", title, done } }

    let store = try await Store.open(path: "\(directory)/app.db", deviceName: "Ana's iPhone", appSecret: "app secret",
                                     sync: SyncConfig(listen: "127.0.0.1:0", mdns: false))  // on a LAN: SyncConfig()
    let todos = try store.collection(name: "todos")
    try await todos.upsert(Todo(id: "milk", title: "Buy milk"))
    try await todos.update("milk") { $0.set("title", "Buy oat milk") }
    let open = try await todos.find(Todo.self, Query(filter: "done == $done", params: ["done": false]))
    print(open.map(\.title))                         // ["Buy oat milk"]

    try await store.startSync()                      // other devices with the same app secret merge in
    for try await list in todos.documents(Todo.self) {  // the current list, then the latest after each change
        print(list.count, "todos")
        break
    }
    // README-END
    store.shutdown()
    return printed
}
