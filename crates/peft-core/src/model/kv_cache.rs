//! Keys and values of earlier positions, per layer, for incremental decoding.
use candle_core::Tensor;

pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
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
        KvCache { layers: vec![None; num_layers], len: 0, virtual_len: 0, prefix_spans: Vec::new() }
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

    pub fn layer_mut(&mut self, i: usize) -> &mut Option<(Tensor, Tensor)> {
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
