//! Hostile: a valid component that does not match the contract. It exports
//! `nodeport:plugin/lifecycle@0.2.0` and `nodeport:plugin/selection@0.2.0` with other
//! signatures and no `nodeport:plugin/lifecycle@0.1.0`, so the host must refuse to load it.
//! It does not use the SDK, which can only build plugins that match the contract.

wit_bindgen::generate!({
    inline: r#"
        package nodeport:plugin@0.2.0;

        interface lifecycle {
            configure: func(config: string) -> bool;
        }

        interface selection {
            select: func(hash: u64, backends: u32) -> u32;
        }

        world wrong {
            export lifecycle;
            export selection;
        }
    "#,
    world: "wrong",
});

struct Wrong;

impl exports::nodeport::plugin::lifecycle::Guest for Wrong {
    fn configure(_: String) -> bool {
        true
    }
}

impl exports::nodeport::plugin::selection::Guest for Wrong {
    fn select(hash: u64, backends: u32) -> u32 {
        (hash % u64::from(backends.max(1))) as u32
    }
}

export!(Wrong);
