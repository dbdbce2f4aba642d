//! Add-wins map: named fields, each holding its own CRDT. A key is present while its field shows something; a
//! concurrent write and removal of one key keep the write (see [`super::field`] for the removal rule).

use super::field::Field;
use super::version::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Encoded as the map of its fields, leaving out the vacant ones ([`Field::is_vacant`]): a removed key leaves an
/// empty field behind in memory, and a map holding one joins, applies ops and reads exactly as a map without it, so
/// states and snapshots do not carry removed keys (issue 17) and two replicas holding the same content encode
/// alike whichever of them removed something.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub(crate) struct MapObj {
    pub fields: BTreeMap<String, Field>,
}

impl Serialize for MapObj {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let held = || self.fields.iter().filter(|(_, f)| !f.is_vacant());
        let mut map = s.serialize_map(Some(held().count()))?;
        for (key, field) in held() {
            map.serialize_entry(key, field)?;
        }
        map.end()
    }
}

impl MapObj {
    pub fn get(&self, key: &str) -> Option<&Field> {
        self.fields.get(key)
    }

    pub fn entry(&mut self, key: &str) -> &mut Field {
        if self.fields.contains_key(key) {
            // Checked just above.
            return self.fields.get_mut(key).expect("entry exists");
        }
        self.fields.entry(key.to_string()).or_default()
    }

    pub fn clear(&mut self, ctx: &VersionVector) {
        for f in self.fields.values_mut() {
            f.clear(ctx);
        }
    }

    /// Whether every field is vacant ([`Field::is_vacant`]): the map holds nothing.
    pub fn is_vacant(&self) -> bool {
        self.fields.values().all(Field::is_vacant)
    }

    pub fn has_visible(&self) -> bool {
        self.fields.values().any(Field::is_visible)
    }
}
