// Codable documents: Swift values in and out of collections, as the JSON objects Shoal stores.

import Foundation

extension JSONEncoder {
    /// An encoder matching how Shoal renders values: `Data` as an array of byte values (the JSON form of a
    /// `FieldValue.bytes` register), keys sorted. Other strategies are Foundation's defaults.
    public static func shoal() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dataEncodingStrategy = .deferredToData
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

extension JSONDecoder {
    /// A decoder matching how Shoal renders values: `Data` from an array of byte values (how a
    /// `FieldValue.bytes` register reads back). Other strategies are Foundation's defaults.
    public static func shoal() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dataDecodingStrategy = .deferredToData
        return decoder
    }
}

/// The JSON text of `value`.
func encodeJSON<T: Encodable>(_ value: T, _ encoder: JSONEncoder) throws -> String {
    String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// `json` decoded as a `T`.
func decodeJSON<T: Decodable>(_ type: T.Type, _ json: String, _ decoder: JSONDecoder) throws -> T {
    try decoder.decode(type, from: Data(json.utf8))
}

extension Collection {
    /// Insert `value`, or merge it into the document named by its `_id` (other fields are kept). `value` must
    /// encode to a JSON object; name its id property `_id` in its `CodingKeys` (e.g. `case id = "_id"`).
    /// Nested objects become maps merged field by field; every other value is a last-writer-wins register.
    ///
    /// - Returns: The document's id (generated, time-sortable, when `value` has no `_id`).
    /// - Throws: `EncodingError`, or `ShoalError.InvalidArgument` when `value` is not a JSON object.
    @discardableResult
    public func upsert<T: Encodable>(_ value: T, encoder: JSONEncoder = .shoal()) throws -> String {
        try upsert(json: encodeJSON(value, encoder))
    }

    /// Document `id` decoded as a `T`, or `nil` when there is no such document.
    ///
    /// - Throws: `DecodingError` when the document does not fit `T`.
    public func get<T: Decodable>(_ type: T.Type, id: String, decoder: JSONDecoder = .shoal()) throws -> T? {
        guard let json = try get(id: id) else { return nil }
        return try decodeJSON(type, json, decoder)
    }

    /// The documents matching `query`, in its order, decoded as `T`s.
    ///
    /// - Throws: `ShoalError.InvalidArgument` for a malformed query, `DecodingError` when a document does not
    ///   fit `T`.
    public func find<T: Decodable>(
        _ type: T.Type,
        _ query: Query = Query(),
        decoder: JSONDecoder = .shoal()
    ) throws -> [T] {
        try find(query: query).map { try decodeJSON(type, $0, decoder) }
    }
}

extension ChangeEvent {
    /// The whole result (`results`) decoded as `T`s, in query order.
    public func results<T: Decodable>(as type: T.Type, decoder: JSONDecoder = .shoal()) throws -> [T] {
        try results.map { try decodeJSON(type, $0, decoder) }
    }

    /// The documents that entered the result (`inserted`) decoded as `T`s.
    public func inserted<T: Decodable>(as type: T.Type, decoder: JSONDecoder = .shoal()) throws -> [T] {
        try inserted.map { try decodeJSON(type, $0, decoder) }
    }

    /// The documents whose content changed (`updated`) decoded as `T`s.
    public func updated<T: Decodable>(as type: T.Type, decoder: JSONDecoder = .shoal()) throws -> [T] {
        try updated.map { try decodeJSON(type, $0, decoder) }
    }
}

/// An attachment token encodes as the JSON object Shoal stores for it (`{"_attachment": hash, "len": n,
/// "meta": {...}}`), so a `Codable` document can hold attachments in its properties.
extension AttachmentToken: Codable {
    private enum CodingKeys: String, CodingKey {
        case hash = "_attachment"
        case length = "len"
        case meta
    }

    /// Decodes a token from its JSON object.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            hash: try c.decode(String.self, forKey: .hash),
            length: try c.decode(UInt64.self, forKey: .length),
            meta: try c.decodeIfPresent([String: String].self, forKey: .meta) ?? [:]
        )
    }

    /// Encodes the token as its JSON object.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(hash, forKey: .hash)
        try c.encode(length, forKey: .length)
        try c.encode(meta, forKey: .meta)
    }
}
