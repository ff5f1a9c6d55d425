//! The [`export!`](crate::export!) macro: makes a plugin type the component's implementation
//! and exports exactly the role interfaces it names.

/// Makes a plugin type the component's implementation and exports the roles it plays.
///
/// ```ignore
/// nodeport_plugin::export!(MyPlugin: admission, selection, affinity); // any subset, any order
/// nodeport_plugin::export!(MyPlugin);                                 // lifecycle only
/// ```
///
/// Call it once per plugin crate (a `cdylib`). The component exports
/// `nodeport:plugin/lifecycle@0.1.0` and, for each role listed, `nodeport:plugin/<role>@0.1.0`;
/// the type must implement the matching trait ([`Admission`](crate::Admission),
/// [`Selection`](crate::Selection), [`Affinity`](crate::Affinity)) for each role listed.
/// Roles not listed are not exported even if the trait is implemented, because the host
/// reads a plugin's roles from its exports.
#[macro_export]
macro_rules! export {
    // Sort the roles into three slots (admission, selection, affinity) so that every order
    // of the same set picks the same world.
    (@sort $ty:ty; [] $s:tt $f:tt; admission $($rest:ident)*) => {
        $crate::export!(@sort $ty; [admission] $s $f; $($rest)*);
    };
    (@sort $ty:ty; $a:tt [] $f:tt; selection $($rest:ident)*) => {
        $crate::export!(@sort $ty; $a [selection] $f; $($rest)*);
    };
    (@sort $ty:ty; $a:tt $s:tt []; affinity $($rest:ident)*) => {
        $crate::export!(@sort $ty; $a $s [affinity]; $($rest)*);
    };
    (@sort $ty:ty; $a:tt $s:tt $f:tt; $role:ident $($rest:ident)*) => {
        ::core::compile_error!(::core::concat!(
            "`", ::core::stringify!($role),
            "` is listed twice or is not a role: expected admission, selection or affinity"
        ));
    };
    (@sort $ty:ty; [] [] []; ) => { $crate::export!(@world $ty; lifecycle_only;); };
    (@sort $ty:ty; [admission] [] []; ) => {
        $crate::export!(@world $ty; admission; admission);
    };
    (@sort $ty:ty; [] [selection] []; ) => {
        $crate::export!(@world $ty; selection; selection);
    };
    (@sort $ty:ty; [] [] [affinity]; ) => {
        $crate::export!(@world $ty; affinity; affinity);
    };
    (@sort $ty:ty; [admission] [selection] []; ) => {
        $crate::export!(@world $ty; admission_selection; admission selection);
    };
    (@sort $ty:ty; [admission] [] [affinity]; ) => {
        $crate::export!(@world $ty; admission_affinity; admission affinity);
    };
    (@sort $ty:ty; [] [selection] [affinity]; ) => {
        $crate::export!(@world $ty; selection_affinity; selection affinity);
    };
    (@sort $ty:ty; [admission] [selection] [affinity]; ) => {
        $crate::export!(@world $ty; admission_selection_affinity; admission selection affinity);
    };
    (@world $ty:ty; $world:ident; $($role:ident)*) => {
        const _: () = {
            struct __NodeportPlugin;

            ::std::thread_local! {
                static __INSTANCE: ::core::cell::RefCell<$ty> =
                    ::core::cell::RefCell::new($crate::__private::new_instance::<$ty>());
            }

            impl $crate::__private::Instance for __NodeportPlugin {
                type Plugin = $ty;
                fn with<R>(f: impl ::core::ops::FnOnce(&mut $ty) -> R) -> R {
                    __INSTANCE.with(|cell| f(&mut cell.borrow_mut()))
                }
            }

            // Native builds (unit tests) have no use for the exports, and their linkers reject
            // the component-model export names.
            #[cfg(target_arch = "wasm32")]
            $crate::__private::bindings::exports::nodeport::plugin::lifecycle
                ::__export_nodeport_plugin_lifecycle_0_1_0_cabi!(
                    __NodeportPlugin with_types_in
                    $crate::__private::bindings::exports::nodeport::plugin::lifecycle
                );
            $( $crate::export!(@role $ty; $role); )*

            // The component-type metadata naming exactly these exports: wasm-component-ld
            // builds the component's exports from it.
            #[cfg(target_arch = "wasm32")]
            #[unsafe(link_section = "component-type:nodeport-plugin:0.1.0:roles")]
            #[used]
            #[doc(hidden)]
            static __NODEPORT_WORLD: [u8; $crate::__private::worlds::$world.len()] =
                $crate::__private::worlds::$world;
        };
    };
    (@role $ty:ty; admission) => {
        const _: fn() = $crate::__private::assert_admission::<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::exports::nodeport::plugin::admission
            ::__export_nodeport_plugin_admission_0_1_0_cabi!(
                __NodeportPlugin with_types_in
                $crate::__private::bindings::exports::nodeport::plugin::admission
            );
    };
    (@role $ty:ty; selection) => {
        const _: fn() = $crate::__private::assert_selection::<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::exports::nodeport::plugin::selection
            ::__export_nodeport_plugin_selection_0_1_0_cabi!(
                __NodeportPlugin with_types_in
                $crate::__private::bindings::exports::nodeport::plugin::selection
            );
    };
    (@role $ty:ty; affinity) => {
        const _: fn() = $crate::__private::assert_affinity::<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::__private::bindings::exports::nodeport::plugin::affinity
            ::__export_nodeport_plugin_affinity_0_1_0_cabi!(
                __NodeportPlugin with_types_in
                $crate::__private::bindings::exports::nodeport::plugin::affinity
            );
    };
    ($ty:ty) => { $crate::export!(@sort $ty; [] [] [];); };
    ($ty:ty : $($role:ident),* $(,)?) => { $crate::export!(@sort $ty; [] [] []; $($role)*); };
}
