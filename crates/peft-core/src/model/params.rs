//! Named parameters. Every weight is a candle `Var`; whether it is trainable is a flag
//! read at forward time: a frozen weight enters the graph detached (sharing storage), so
//! no gradient is computed for it and freezing follows from the flag alone.
use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

pub struct Parameter {
    pub name: String,
    var: Var,
    pub requires_grad: bool,
    pub grad: Option<Tensor>,
}

impl Parameter {
    /// The value as it enters a graph: tracked when trainable, detached otherwise.
    pub fn tensor(&self, no_grad: bool) -> Tensor {
        if self.requires_grad && !no_grad {
            self.var.as_tensor().clone()
        } else {
            self.var.as_tensor().detach()
        }
    }

    pub fn value(&self) -> &Tensor {
        self.var.as_tensor()
    }

    pub fn set(&self, value: &Tensor) -> Result<()> {
        if value.dims() != self.var.dims() {
            return Err(Error::arg(&self.name, format!("shape {:?}", self.var.dims()), format!("{:?}", value.dims())));
        }
        Ok(self.var.set(&value.to_dtype(self.var.dtype())?)?)
    }
}

#[derive(Default)]
pub struct ParamStore {
    params: Vec<Option<Parameter>>,
    by_name: HashMap<String, ParamId>,
}

impl ParamStore {
    pub fn add(&mut self, name: impl Into<String>, value: Tensor, requires_grad: bool) -> Result<ParamId> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::arg("parameter name", "a name not already in use", name));
        }
        let id = ParamId(self.params.len());
        let var = Var::from_tensor(&value)?;
        self.params.push(Some(Parameter { name: name.clone(), var, requires_grad, grad: None }));
        self.by_name.insert(name, id);
        Ok(id)
    }

    pub fn remove(&mut self, id: ParamId) -> Option<Parameter> {
        let p = self.params.get_mut(id.0).and_then(Option::take)?;
        self.by_name.remove(&p.name);
        Some(p)
    }

    pub fn get(&self, id: ParamId) -> &Parameter {
        self.params[id.0].as_ref().expect("parameter used after removal")
    }

    pub fn get_mut(&mut self, id: ParamId) -> &mut Parameter {
        self.params[id.0].as_mut().expect("parameter used after removal")
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    pub fn by_name(&self, name: &str) -> Result<&Parameter> {
        self.id(name).map(|id| self.get(id)).ok_or_else(|| Error::arg("name", "the name of a parameter", name))
    }

    pub fn by_name_mut(&mut self, name: &str) -> Result<&mut Parameter> {
        let id = self.id(name).ok_or_else(|| Error::arg("name", "the name of a parameter", name))?;
        Ok(self.get_mut(id))
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Parameter)> {
        self.params.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (ParamId(i), p)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Parameter> {
        self.params.iter_mut().filter_map(Option::as_mut)
    }

    /// Adds the gradients of trainable parameters found in `grads` to `.grad`, as PyTorch
    /// accumulates until `zero_grad`.
    pub fn accumulate_grads(&mut self, grads: &GradStore) -> Result<()> {
        for p in self.iter_mut() {
            if !p.requires_grad {
                continue;
            }
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let g = g.detach().to_dtype(p.var.dtype())?;
                p.grad = Some(match p.grad.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        for p in self.iter_mut() {
            p.grad = None;
        }
    }
}
