//! Paths of the guest test programs (`tests/programs`), built to wasm32-wasip1 by `build.rs`
//! when this crate is compiled. Each constant is the absolute path of a `.wasm` module.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn every_artifact_is_a_wasm_module() {
        for path in [
            super::CONFORMANCE,
            super::START_STYLE,
            super::HEADER_BENCH,
            super::TAX_BENCH,
        ] {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                bytes.starts_with(b"\0asm"),
                "{path} does not start with the wasm magic"
            );
        }
    }
}
