//! Thin Node-API handles over peft-core. No math here: each method converts its
//! arguments, runs the core off the JS thread, and converts the result or error.
mod error;
mod generate;
mod job;
mod model;
mod optim;
mod peft;
mod tensor;
mod tokenizer;

pub use generate::NativeAbort;
pub use model::NativeModel;
pub use tensor::NativeTensor;
pub use tokenizer::{NativeStreamDecoder, NativeTokenizer};
