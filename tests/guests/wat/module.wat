;; A component of the flow8 `module` world in the WebAssembly text format, for test
;; components Rust cannot make: `tests/support/wat_guest.rs` fills in MANIFEST (the
;; manifest JSON), MANIFEST_LEN, GROW0 and GROW1. It has two core instances, each
;; with its own linear memory: `$main` (the canonical ABI's `memory`) and `$other`;
;; `execute` grows `memory` by GROW0 pages and `$other`'s by GROW1 pages (64 KiB each),
;; then answers `{"grown":true}`. The `error` type comes from the `types` interface, as
;; the WIT says.
(component
  (import "flow8:integration/types@0.1.0" (instance $types
    (type $rate-limit (record (field "message" string) (field "retry-after-seconds" (option u32))))
    (export "rate-limit" (type $rl (eq $rate-limit)))
    (type $upstream-error (record (field "status" u16) (field "message" string)))
    (export "upstream-error" (type $ue (eq $upstream-error)))
    (type $error (variant
      (case "invalid-input" string)
      (case "access-denied" string)
      (case "insufficient-scope" string)
      (case "token-revoked" string)
      (case "rate-limit-exceeded" $rl)
      (case "upstream" $ue)
      (case "network" string)
      (case "forbidden" string)
      (case "limit-exceeded" string)
      (case "internal" string)))
    (export "error" (type (eq $error)))))
  (alias export $types "error" (type $error))

  ;; A second core instance with a memory of its own.
  (core module $other
    (memory 1)
    (func (export "grow") (param i32) (result i32)
      (memory.grow (local.get 0))))
  (core instance $other (instantiate $other))

  (core module $main
    (import "other" "grow" (func $grow_other (param i32) (result i32)))
    (memory (export "memory") 4)
    ;; Bump allocator for the host's copy of the input (cabi_realloc).
    (global $heap (mut i32) (i32.const 131072))
    (data (memory 0) (i32.const 1024) "MANIFEST")
    (data (memory 0) (i32.const 64) "{\"grown\":true}")

    (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
      (local $ptr i32)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size 0) (i32.const 65536)))
        (then unreachable))
      (local.get $ptr))

    ;; manifest: func() -> string, through an 8-byte area at 16.
    (func (export "manifest") (result i32)
      (i32.store (i32.const 16) (i32.const 1024))
      (i32.store (i32.const 20) (i32.const MANIFEST_LEN))
      (i32.const 16))

    ;; execute: func(input: string) -> result<string, error>: discriminant 0 (ok) at
    ;; 32, the string at 36 and 40.
    (func (export "execute") (param $ptr i32) (param $len i32) (result i32)
      (if (i32.eq (call $grow_other (i32.const GROW1)) (i32.const -1)) (then unreachable))
      (if (i32.eq (memory.grow 0 (i32.const GROW0)) (i32.const -1)) (then unreachable))
      (i32.store8 (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.const 64))
      (i32.store (i32.const 40) (i32.const 14))
      (i32.const 32)))

  (core instance $i (instantiate $main (with "other" (instance $other))))
  (func $manifest (result string)
    (canon lift (core func $i "manifest") (memory $i "memory") (realloc (func $i "cabi_realloc"))))
  (func $execute (param "input" string) (result (result string (error $error)))
    (canon lift (core func $i "execute") (memory $i "memory") (realloc (func $i "cabi_realloc"))))
  (export "manifest" (func $manifest))
  (export "execute" (func $execute)))
