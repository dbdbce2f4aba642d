//! Add-wins map: named fields, each holding its own CRDT. A key is present while its field shows something; a
//! concurrent write and removal of one key keep the write (see [`super::field`] for the removal rule).

use super::field::Field;
use super::version::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct MapObj {
    pub fields: BTreeMap<String, Field>,
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

    pub fn has_visible(&self) -> bool {
        self.fields.values().any(Field::is_visible)
    }
}
