//! Keys and values of earlier positions, per layer, for incremental decoding.
use candle_core::{Result, Tensor};

/// One layer's keys and values, [b, kv_heads, positions, head_dim], written in place into
/// buffers with room to spare: a decode step copies only its own position in, where
/// concatenating would copy every cached position again (and allocate a larger tensor) at
/// every step. The room doubles when it runs out, so a generation allocates O(log n) times.
#[derive(Default)]
pub struct LayerCache {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl LayerCache {
    /// Appends `k`, `v` ([b, h, t, d]) and returns all cached keys and values, these included.
    /// Inputs that carry a graph (nothing in generation does) are concatenated instead, so
    /// their gradient still flows; the cache itself never keeps a graph.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let need = self.len + t;
        let room = self.buffers.as_ref().map_or(0, |(kb, _)| kb.dims()[2]);
        if need > room {
            let cap = need.max(2 * room).max(16);
            let grow = |old: Option<&Tensor>, x: &Tensor| -> Result<Tensor> {
                let (b, h, _, d) = x.dims4()?;
                let buf = Tensor::zeros((b, h, cap, d), x.dtype(), x.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let (ko, vo) = (self.buffers.as_ref().map(|b| &b.0), self.buffers.as_ref().map(|b| &b.1));
            self.buffers = Some((grow(ko, k)?, grow(vo, v)?));
        }
        let (kb, vb) = self.buffers.as_ref().expect("allocated above");
        let past = self.len;
        kb.slice_set(&k.detach().contiguous()?, 2, past)?;
        vb.slice_set(&v.detach().contiguous()?, 2, past)?;
        self.len = need;
        if k.track_op() || v.track_op() {
            let (pk, pv) = (kb.narrow(2, 0, past)?, vb.narrow(2, 0, past)?);
            return Ok((Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?));
        }
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }

    /// Positions cached in this layer.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    /// Of `len`, the positions an adapter put there at prefill (prompt tuning's virtual
    /// tokens, prefix tuning's key/value prefix): the caller's attention mask and
    /// position ids never count them.
    virtual_len: usize,
    /// The adapters' key/value prefix columns at the front, (adapter, n) in order, so that
    /// gated prefixes (UniPELT) are gated again at every decoding step.
    prefix_spans: Vec<(String, usize)>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: (0..num_layers).map(|_| LayerCache::default()).collect(), len: 0, virtual_len: 0, prefix_spans: Vec::new() }
    }

    /// Positions already cached (virtual ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cached positions that came from adapters, not from the caller's tokens.
    pub fn virtual_len(&self) -> usize {
        self.virtual_len
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    pub(crate) fn prefix_spans(&self) -> &[(String, usize)] {
        &self.prefix_spans
    }

    pub(crate) fn set_prefix_spans(&mut self, spans: Vec<(String, usize)>) {
        self.prefix_spans = spans;
    }

    /// `t` positions were appended, `virtual_t` of them from adapters.
    pub(crate) fn advance(&mut self, t: usize, virtual_t: usize) {
        self.len += t;
        self.virtual_len += virtual_t;
    }
}
