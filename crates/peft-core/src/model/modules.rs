//! The one module walker: every module of the model with its checkpoint path, in the order
//! transformers' `named_modules()` lists them. Targeting, hook sites, merging and saving
//! all find modules through it, so a path is spelled in one place per architecture.
use super::decoder::CausalLm;
use super::layers::{Linear, Norm, QkvProj};
use super::params::ParamId;

pub enum ModuleKind<'a> {
    /// A module that only holds others (`model.layers.0`, `...self_attn`, `...mlp`).
    Container,
    Embedding(ParamId),
    Linear(&'a Linear),
    Norm(&'a Norm),
    /// Modules without weights (`act_fn`, `rotary_emb`).
    Other,
}

pub struct Module<'a> {
    pub path: String,
    pub kind: ModuleKind<'a>,
}

impl CausalLm {
    /// Every module, the root ("") left out.
    pub fn modules(&self) -> Vec<Module<'_>> {
        let m = |path: String, kind| Module { path, kind };
        let mut v = vec![
            m("model".into(), ModuleKind::Container),
            m("model.embed_tokens".into(), ModuleKind::Embedding(self.embed_tokens)),
            m("model.layers".into(), ModuleKind::Container),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            v.push(m(format!("model.layers.{i}"), ModuleKind::Container));
            let a = &l.self_attn;
            v.push(m(a.path.clone(), ModuleKind::Container));
            v.extend(a.linears().into_iter().map(|x| m(x.path.clone(), ModuleKind::Linear(x))));
            v.extend(a.q_norm.iter().chain(&a.k_norm).map(|n| m(n.path.clone(), ModuleKind::Norm(n))));
            v.push(m(l.mlp.path.clone(), ModuleKind::Container));
            v.extend(l.mlp.linears().into_iter().map(|x| m(x.path.clone(), ModuleKind::Linear(x))));
            let act = if matches!(a.qkv, QkvProj::Fused { .. }) { "activation_fn" } else { "act_fn" };
            v.push(m(format!("{}.{act}", l.mlp.path), ModuleKind::Other));
            v.extend(l.norms().into_iter().map(|n| m(n.path.clone(), ModuleKind::Norm(n))));
        }
        v.push(m(self.norm.path.clone(), ModuleKind::Norm(&self.norm)));
        v.push(m("model.rotary_emb".into(), ModuleKind::Other));
        if let Some(h) = &self.lm_head {
            v.push(m(h.path.clone(), ModuleKind::Linear(h)));
        }
        v
    }

    pub fn module_names(&self) -> Vec<String> {
        self.modules().into_iter().map(|m| m.path).collect()
    }

    /// Every linear layer, in `named_modules()` order.
    pub fn linears(&self) -> Vec<&Linear> {
        self.modules().into_iter().filter_map(|m| if let ModuleKind::Linear(l) = m.kind { Some(l) } else { None }).collect()
    }

    /// Every RMSNorm (q/k norms included), in `named_modules()` order.
    pub fn norms(&self) -> Vec<&Norm> {
        self.modules().into_iter().filter_map(|m| if let ModuleKind::Norm(n) = m.kind { Some(n) } else { None }).collect()
    }

    pub fn linear(&self, path: &str) -> Option<&Linear> {
        self.linears().into_iter().find(|l| l.path == path)
    }

    /// The linear at `path`, to give it a bias when a merge needs one.
    pub fn linear_mut(&mut self, path: &str) -> Option<&mut Linear> {
        if self.lm_head.as_ref().is_some_and(|h| h.path == path) {
            return self.lm_head.as_mut();
        }
        self.layers.iter_mut().find_map(|l| {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            a.linears_mut().into_iter().chain(m.linears_mut()).find(|x| x.path == path)
        })
    }

    /// The weight of the module at `path`: a linear's or a norm's (what merging rewrites).
    pub fn module_weight(&self, path: &str) -> Option<ParamId> {
        self.modules().into_iter().find(|m| m.path == path).and_then(|m| match m.kind {
            ModuleKind::Linear(l) => Some(l.weight),
            ModuleKind::Norm(n) => Some(n.weight),
            _ => None,
        })
    }

    /// The attention and MLP sublayers of each decoder layer: (layer, attention path, MLP path).
    pub fn sublayers(&self) -> Vec<(usize, &str, &str)> {
        self.layers.iter().enumerate().map(|(i, l)| (i, l.self_attn.path.as_str(), l.mlp.path.as_str())).collect()
    }
}
