//! Named parameters. Every weight is a candle `Var`; whether it is trainable is a flag
//! read at forward time: a frozen weight enters the graph detached (sharing storage), so
//! no gradient is computed for it and freezing follows from the flag alone. A frozen base
//! weight may instead be kept quantized (`QWeight`), and is then never trainable.
use super::qweight::QWeight;
use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

pub struct Parameter {
    pub name: String,
    /// Behind a lock so that `set` can turn a quantized weight dense through `&self`, as
    /// `Var::set` updates a dense one.
    value: RwLock<Value>,
    requires_grad: bool,
    pub grad: Option<Tensor>,
}

/// A dense `Var`, or a frozen weight kept in its storage type (a GGUF quantization or half
/// precision): see `QWeight`. Only linear and embedding weights are kept quantized.
enum Value {
    Dense(Var),
    Quantized(Arc<QWeight>),
}

impl Parameter {
    /// The value as it enters a graph: tracked when trainable, detached otherwise. A
    /// quantized weight comes dequantized (f32), for this use only: the model's linears and
    /// embedding read it through `quantized()` instead, without dequantizing it whole.
    pub fn tensor(&self, no_grad: bool) -> Tensor {
        match &*self.read() {
            Value::Dense(var) if self.requires_grad && !no_grad => var.as_tensor().clone(),
            Value::Dense(var) => var.as_tensor().detach(),
            Value::Quantized(q) => q.to_tensor(DType::F32, &Device::Cpu).expect("dequantizing a checked weight"),
        }
    }

    /// The value: the `Var`'s own tensor (the key of its gradient in a `GradStore`), or a
    /// quantized weight dequantized to f32 (see `tensor`).
    pub fn value(&self) -> Tensor {
        match &*self.read() {
            Value::Dense(var) => var.as_tensor().clone(),
            Value::Quantized(q) => q.to_tensor(DType::F32, &Device::Cpu).expect("dequantizing a checked weight"),
        }
    }

    /// The quantized weight, when this parameter is one.
    pub fn quantized(&self) -> Option<Arc<QWeight>> {
        match &*self.read() {
            Value::Quantized(q) => Some(q.clone()),
            Value::Dense(_) => None,
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        match &*self.read() {
            Value::Dense(var) => var.dims().to_vec(),
            Value::Quantized(q) => vec![q.dims().0, q.dims().1],
        }
    }

    /// The dtype computations see (f32 for a quantized weight).
    pub fn dtype(&self) -> DType {
        match &*self.read() {
            Value::Dense(var) => var.dtype(),
            Value::Quantized(_) => DType::F32,
        }
    }

    pub fn device(&self) -> Device {
        match &*self.read() {
            Value::Dense(var) => var.device().clone(),
            Value::Quantized(_) => Device::Cpu,
        }
    }

    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// Makes the parameter trainable or frozen. A quantized weight can only be frozen: its
    /// gradient would need the dense weight this storage exists to avoid.
    pub fn set_requires_grad(&mut self, on: bool) -> Result<()> {
        if let Some(q) = self.quantized().filter(|_| on) {
            return Err(Error::Unsupported(format!(
                "training `{}`: it is kept quantized ({:?}) and a quantized base weight is frozen; load the model with dtype 'float32' to train base weights",
                self.name, q.dtype())));
        }
        self.requires_grad = on;
        Ok(())
    }

    /// Replaces the value. A quantized weight becomes dense f32 (merging an adapter into it,
    /// PiSSA's residual): the new value is no longer what the storage type can hold exactly.
    pub fn set(&self, value: &Tensor) -> Result<()> {
        if value.dims() != self.dims().as_slice() {
            return Err(Error::arg(&self.name, format!("shape {:?}", self.dims()), format!("{:?}", value.dims())));
        }
        let mut guard = self.value.write().unwrap_or_else(|e| e.into_inner());
        match &*guard {
            Value::Dense(var) => Ok(var.set(&value.to_dtype(var.dtype())?)?),
            Value::Quantized(_) => {
                *guard = Value::Dense(Var::from_tensor(&value.to_dtype(DType::F32)?.copy()?)?);
                Ok(())
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Value> {
        self.value.read().unwrap_or_else(|e| e.into_inner())
    }

    fn var(&self) -> Option<Var> {
        match &*self.read() {
            Value::Dense(var) => Some(var.clone()),
            Value::Quantized(_) => None,
        }
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
        self.params.push(Some(Parameter { name: name.clone(), value: RwLock::new(Value::Dense(var)), requires_grad, grad: None }));
        self.by_name.insert(name, id);
        Ok(id)
    }

    /// A frozen weight kept in its storage type.
    pub fn add_quantized(&mut self, name: impl Into<String>, value: Arc<QWeight>) -> Result<ParamId> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::arg("parameter name", "a name not already in use", name));
        }
        let id = ParamId(self.params.len());
        self.params.push(Some(Parameter {
            name: name.clone(),
            value: RwLock::new(Value::Quantized(value)),
            requires_grad: false,
            grad: None,
        }));
        self.by_name.insert(name, id);
        Ok(id)
    }

    /// Bytes held by quantized weights, and their count.
    pub fn quantized_bytes(&self) -> (usize, usize) {
        self.iter().filter_map(|(_, p)| p.quantized()).fold((0, 0), |(b, n), q| (b + q.storage_bytes(), n + 1))
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
            let Some(var) = p.var() else { continue };
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach().to_dtype(var.dtype())?;
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
