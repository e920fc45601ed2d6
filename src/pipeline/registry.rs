//! The set of stage kinds a pipeline may use.

use crate::pipeline::kind::StageKind;

pub struct Registry {
    kinds: Vec<&'static dyn StageKind>,
}

impl Registry {
    pub fn new(kinds: Vec<&'static dyn StageKind>) -> Self {
        Self { kinds }
    }

    pub fn get(&self, name: &str) -> Option<&'static dyn StageKind> {
        self.kinds.iter().copied().find(|k| k.spec().name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + Clone + '_ {
        self.kinds.iter().map(|k| k.spec().name)
    }

    pub fn kinds(&self) -> &[&'static dyn StageKind] {
        &self.kinds
    }
}
