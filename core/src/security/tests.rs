//! Tests of the handshake and the secure channel together, driven through their state machines.

use proptest::prelude::*;

use super::*;
use crate::transport::frame::{encode_frame, FrameDecoder};

const PROLOGUE: &[u8] = b"shoal-sync/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Initiator,
    Responder,
}

fn secret(bytes: &[u8]) -> AppSecret {
    AppSecret::from_bytes(bytes).unwrap()
}

fn identity() -> Identity {
    Identity::generate().unwrap()
}

/// Delivers handshake messages between the two sides until neither has anything to send, or one fails; returns
/// the messages sent, in order.
fn drive(initiator: &mut Handshake, responder: &mut Handshake) -> Result<Vec<Vec<u8>>, (Side, SecurityError)> {
    let mut sent = Vec::new();
    loop {
        let mut progressed = false;
        if let Some(msg) = initiator.take_outgoing().map_err(|e| (Side::Initiator, e))? {
            responder.incoming(&msg).map_err(|e| (Side::Responder, e))?;
            sent.push(msg);
            progressed = true;
        }
        if let Some(msg) = responder.take_outgoing().map_err(|e| (Side::Responder, e))? {
            initiator.incoming(&msg).map_err(|e| (Side::Initiator, e))?;
            sent.push(msg);
            progressed = true;
        }
        if !progressed {
            return Ok(sent);
        }
    }
}

struct Linked {
    a: SecureChannel,
    b: SecureChannel,
    a_id: Identity,
    b_id: Identity,
    a_sees: DeviceKey,
    b_sees: DeviceKey,
}

/// Two devices with the same secret and prologue, after a completed handshake (`a` initiated).
fn linked() -> Linked {
    let (a_id, b_id) = (identity(), identity());
    let app = secret(b"app secret");
    let mut init = Handshake::initiator(&a_id, &app, PROLOGUE).unwrap();
    let mut resp = Handshake::responder(&b_id, &app, PROLOGUE).unwrap();
    drive(&mut init, &mut resp).unwrap();
    assert!(init.is_finished() && resp.is_finished());
    let (a, a_sees) = init.into_channel().unwrap();
    let (b, b_sees) = resp.into_channel().unwrap();
    Linked { a, b, a_id, b_id, a_sees, b_sees }
}

/// The handshake messages up to (not including) message `index`, delivered, and message `index` returned
/// undelivered with the side that should receive it.
fn handshake_up_to(index: usize) -> (Handshake, Handshake, Vec<u8>, Side) {
    let app = secret(b"app secret");
    let mut init = Handshake::initiator(&identity(), &app, PROLOGUE).unwrap();
    let mut resp = Handshake::responder(&identity(), &app, PROLOGUE).unwrap();
    for step in 0..=index {
        let (from, to, side) = if step % 2 == 0 {
            (&mut init, &mut resp, Side::Responder)
        } else {
            (&mut resp, &mut init, Side::Initiator)
        };
        let msg = from.take_outgoing().unwrap().unwrap();
        if step == index {
            return (init, resp, msg, side);
        }
        to.incoming(&msg).unwrap();
    }
    unreachable!()
}

fn receiver(init: &mut Handshake, resp: &mut Handshake, side: Side) -> Handshake {
    let placeholder = Handshake::responder(&identity(), &secret(b"x"), b"").unwrap();
    match side {
        Side::Initiator => std::mem::replace(init, placeholder),
        Side::Responder => std::mem::replace(resp, placeholder),
    }
}

#[test]
fn handshake_completes_and_messages_flow_both_ways() {
    let mut l = linked();
    for round in 0..20u32 {
        let to_b = format!("a->b #{round}").into_bytes();
        let sealed = l.a.seal(&to_b).unwrap();
        assert_ne!(sealed[..to_b.len()], to_b[..]);
        assert_eq!(l.b.open(&sealed).unwrap(), to_b);
        // Several in a row one way, then the other way.
        if round % 3 == 0 {
            let extra = l.a.seal(b"extra").unwrap();
            assert_eq!(l.b.open(&extra).unwrap(), b"extra");
        }
        let to_a = format!("b->a #{round}").into_bytes();
        let sealed = l.b.seal(&to_a).unwrap();
        assert_eq!(l.a.open(&sealed).unwrap(), to_a);
    }
    let empty = l.a.seal(b"").unwrap();
    assert_eq!(empty.len(), TAG_LEN);
    assert_eq!(l.b.open(&empty).unwrap(), b"");
}

#[test]
fn each_side_learns_the_others_public_key() {
    let l = linked();
    assert_eq!(l.a_sees.0, l.b_id.public_key());
    assert_eq!(l.b_sees.0, l.a_id.public_key());
    assert_eq!(l.a_sees, l.b_id.device_key());
    assert_eq!(l.a.remote_key(), l.a_sees);
    assert_eq!(l.b.remote_key(), l.b_sees);
}

#[test]
fn handshake_is_three_messages_of_known_sizes() {
    let app = secret(b"app secret");
    let mut init = Handshake::initiator(&identity(), &app, PROLOGUE).unwrap();
    let mut resp = Handshake::responder(&identity(), &app, PROLOGUE).unwrap();
    let sent = drive(&mut init, &mut resp).unwrap();
    let sizes: Vec<usize> = sent.iter().map(Vec::len).collect();
    // -> psk, e (+ tag: psk handshakes key the cipher from e); <- e, ee, s, es; -> s, se
    assert_eq!(sizes, [48, 96, 64]);
}

#[test]
fn turns_are_enforced() {
    let app = secret(b"app secret");
    let mut init = Handshake::initiator(&identity(), &app, PROLOGUE).unwrap();
    let mut resp = Handshake::responder(&identity(), &app, PROLOGUE).unwrap();
    // The responder has nothing to say first, and the initiator nothing more until it hears back.
    assert_eq!(resp.take_outgoing(), Ok(None));
    let first = init.take_outgoing().unwrap();
    assert!(first.is_some());
    assert_eq!(init.take_outgoing(), Ok(None));
    // Once the responder has the first message it is its turn to speak: another message is out of turn.
    resp.incoming(&first.unwrap_or_default()).unwrap();
    assert!(matches!(resp.incoming(&[0u8; 48]), Err(SecurityError::Handshake(_))));
    assert!(resp.is_failed());
    assert_eq!(resp.take_outgoing(), Err(SecurityError::WrongState("the handshake has failed")));
}

#[test]
fn initiator_refuses_a_message_before_speaking() {
    let mut init = Handshake::initiator(&identity(), &secret(b"app secret"), PROLOGUE).unwrap();
    assert!(matches!(init.incoming(&[0u8; 96]), Err(SecurityError::Handshake(_))));
    assert!(init.is_failed());
}

#[test]
fn message_after_finish_fails_the_handshake() {
    let app = secret(b"app secret");
    let mut init = Handshake::initiator(&identity(), &app, PROLOGUE).unwrap();
    let mut resp = Handshake::responder(&identity(), &app, PROLOGUE).unwrap();
    drive(&mut init, &mut resp).unwrap();
    assert_eq!(init.take_outgoing(), Ok(None));
    assert!(matches!(resp.incoming(&[1u8; 64]), Err(SecurityError::Handshake(_))));
    assert!(matches!(resp.into_channel(), Err(SecurityError::WrongState(_))));
}

#[test]
fn into_channel_before_finishing_is_wrong_state() {
    let app = secret(b"app secret");
    let init = Handshake::initiator(&identity(), &app, PROLOGUE).unwrap();
    assert!(!init.is_finished());
    assert!(matches!(init.into_channel(), Err(SecurityError::WrongState(_))));
    let (init, _resp, _msg, _) = handshake_up_to(1);
    assert!(matches!(init.into_channel(), Err(SecurityError::WrongState(_))));
}

/// Runs a handshake that must fail; checks that the side that failed did so with a `Handshake` error, can give
/// no channel, and that the two sides never both finish.
fn assert_handshake_fails(mut init: Handshake, mut resp: Handshake) -> Side {
    let Err((side, err)) = drive(&mut init, &mut resp) else {
        panic!("the handshake should have failed");
    };
    assert!(matches!(err, SecurityError::Handshake(_)), "{err:?}");
    assert!(!(init.is_finished() && resp.is_finished()));
    let failed = if side == Side::Initiator { init } else { resp };
    assert!(failed.is_failed());
    assert!(matches!(failed.into_channel(), Err(SecurityError::WrongState(_))));
    side
}

#[test]
fn wrong_app_secret_fails_and_gives_no_channel() {
    let (a, b) = (identity(), identity());
    let init = Handshake::initiator(&a, &secret(b"secret one"), PROLOGUE).unwrap();
    let resp = Handshake::responder(&b, &secret(b"secret two"), PROLOGUE).unwrap();
    // With psk0 the app secret is checked on the first message, so the responder is the one to notice.
    assert_eq!(assert_handshake_fails(init, resp), Side::Responder);
}

#[test]
fn wrong_app_secret_on_either_side_fails() {
    for (init_secret, resp_secret) in [(&b"right"[..], &b"wrong"[..]), (b"wrong", b"right"), (b"a", b"A")] {
        let init = Handshake::initiator(&identity(), &secret(init_secret), PROLOGUE).unwrap();
        let resp = Handshake::responder(&identity(), &secret(resp_secret), PROLOGUE).unwrap();
        assert_handshake_fails(init, resp);
    }
}

#[test]
fn different_prologue_fails() {
    let app = secret(b"app secret");
    let init = Handshake::initiator(&identity(), &app, b"shoal-sync/1").unwrap();
    let resp = Handshake::responder(&identity(), &app, b"shoal-sync/2").unwrap();
    assert_handshake_fails(init, resp);
    let init = Handshake::initiator(&identity(), &app, b"").unwrap();
    let resp = Handshake::responder(&identity(), &app, PROLOGUE).unwrap();
    assert_handshake_fails(init, resp);
}

#[test]
fn tampered_handshake_messages_fail() {
    for index in 0..3 {
        for (byte, bit) in [(0usize, 0u8), (5, 3), (31, 7), (40, 1), (47, 7)] {
            let (mut init, mut resp, mut msg, side) = handshake_up_to(index);
            msg[byte] ^= 1 << bit;
            let mut to = receiver(&mut init, &mut resp, side);
            assert!(matches!(to.incoming(&msg), Err(SecurityError::Handshake(_))), "message {index} byte {byte}");
            assert!(to.is_failed());
            assert!(matches!(to.into_channel(), Err(SecurityError::WrongState(_))));
        }
    }
}

#[test]
fn truncated_and_extended_handshake_messages_fail() {
    for index in 0..3 {
        let (mut init, mut resp, msg, side) = handshake_up_to(index);
        let mut to = receiver(&mut init, &mut resp, side);
        assert!(to.incoming(&msg[..msg.len() - 1]).is_err());
        let (mut init, mut resp, mut msg, side) = handshake_up_to(index);
        msg.push(0);
        let mut to = receiver(&mut init, &mut resp, side);
        assert!(to.incoming(&msg).is_err());
    }
}

#[test]
fn garbage_handshake_messages_error_without_panic() {
    let huge = vec![0xA5u8; 70_000];
    let max = vec![0x5Au8; MAX_MESSAGE_LEN];
    let garbage: [&[u8]; 6] = [&[], &[0], &[0xFF; 32], &[7; 48], &max, &huge];
    for index in 0..3 {
        for msg in garbage {
            let (mut init, mut resp, _real, side) = handshake_up_to(index);
            let mut to = receiver(&mut init, &mut resp, side);
            assert!(
                matches!(to.incoming(msg), Err(SecurityError::Handshake(_))),
                "message {index}, {} bytes",
                msg.len()
            );
            // Failed for good.
            assert_eq!(to.incoming(msg), Err(SecurityError::WrongState("the handshake has failed")));
            assert!(to.take_outgoing().is_err());
        }
    }
}

#[test]
fn tampered_ciphertext_fails_at_every_bit() {
    let plaintext = b"change set #42";
    let probe = linked().a.seal(plaintext).unwrap();
    for byte in 0..probe.len() {
        for bit in 0..8 {
            let mut l = linked();
            let mut sealed = l.a.seal(plaintext).unwrap();
            sealed[byte] ^= 1 << bit;
            assert_eq!(l.b.open(&sealed), Err(SecurityError::Decrypt), "byte {byte} bit {bit}");
        }
    }
}

#[test]
fn truncated_and_short_ciphertexts_fail() {
    for len in [0usize, 1, TAG_LEN - 1, TAG_LEN, TAG_LEN + 3] {
        let mut l = linked();
        let sealed = l.a.seal(b"four").unwrap();
        assert_eq!(sealed.len(), TAG_LEN + 4);
        assert_eq!(l.b.open(&sealed[..len]), Err(SecurityError::Decrypt), "{len}");
    }
}

#[test]
fn replayed_message_fails() {
    let mut l = linked();
    let sealed = l.a.seal(b"once").unwrap();
    assert_eq!(l.b.open(&sealed).unwrap(), b"once");
    assert_eq!(l.b.open(&sealed), Err(SecurityError::Decrypt));
}

#[test]
fn reordered_messages_fail() {
    let mut l = linked();
    let first = l.a.seal(b"first").unwrap();
    let second = l.a.seal(b"second").unwrap();
    assert_eq!(l.b.open(&second), Err(SecurityError::Decrypt));
    // The channel has failed: even the right message is refused now.
    assert_eq!(l.b.open(&first), Err(SecurityError::WrongState("the channel has failed")));
}

#[test]
fn dropped_message_fails() {
    let mut l = linked();
    let _lost = l.a.seal(b"lost").unwrap();
    let next = l.a.seal(b"next").unwrap();
    assert_eq!(l.b.open(&next), Err(SecurityError::Decrypt));
}

#[test]
fn reflected_message_fails() {
    // A message sent back to its sender (each direction has its own key).
    let mut l = linked();
    let sealed = l.a.seal(b"to b").unwrap();
    assert_eq!(l.a.open(&sealed), Err(SecurityError::Decrypt));
}

#[test]
fn message_from_another_session_fails() {
    // Same two identities, two handshakes: the session keys differ.
    let (a_id, b_id) = (identity(), identity());
    let app = secret(b"app secret");
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut init = Handshake::initiator(&a_id, &app, PROLOGUE).unwrap();
        let mut resp = Handshake::responder(&b_id, &app, PROLOGUE).unwrap();
        drive(&mut init, &mut resp).unwrap();
        sessions.push((init.into_channel().unwrap().0, resp.into_channel().unwrap().0));
    }
    let sealed = sessions[0].0.seal(b"hello").unwrap();
    assert_eq!(sessions[1].1.open(&sealed), Err(SecurityError::Decrypt));
}

#[test]
fn failed_channel_refuses_to_seal_and_open() {
    let mut l = linked();
    assert_eq!(l.b.open(b"definitely not a sealed message"), Err(SecurityError::Decrypt));
    assert!(l.b.is_failed());
    assert_eq!(l.b.seal(b"x"), Err(SecurityError::WrongState("the channel has failed")));
    let sealed = l.a.seal(b"x").unwrap();
    assert_eq!(l.b.open(&sealed), Err(SecurityError::WrongState("the channel has failed")));
}

#[test]
fn oversize_plaintext_errors_and_the_channel_stays_usable() {
    let mut l = linked();
    let too_big = vec![0u8; MAX_PLAINTEXT + 1];
    assert_eq!(l.a.seal(&too_big), Err(SecurityError::TooLarge { len: MAX_PLAINTEXT + 1, max: MAX_PLAINTEXT }));
    assert!(!l.a.is_failed());
    let largest = vec![9u8; MAX_PLAINTEXT];
    let sealed = l.a.seal(&largest).unwrap();
    assert_eq!(sealed.len(), MAX_MESSAGE_LEN);
    assert_eq!(l.b.open(&sealed).unwrap(), largest);
}

#[test]
fn oversize_ciphertext_errors() {
    let mut l = linked();
    let huge = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(l.b.open(&huge), Err(SecurityError::TooLarge { len: MAX_MESSAGE_LEN + 1, max: MAX_MESSAGE_LEN }));
    assert!(l.b.is_failed());
}

#[test]
fn sealed_messages_travel_in_frames() {
    // The largest sealed message fits in one frame; a stream of frames carries a conversation.
    let mut l = linked();
    let messages: Vec<Vec<u8>> = vec![b"hi".to_vec(), vec![3u8; MAX_PLAINTEXT], Vec::new(), b"bye".to_vec()];
    let mut stream = Vec::new();
    for message in &messages {
        encode_frame(&l.a.seal(message).unwrap(), &mut stream).unwrap();
    }
    let mut decoder = FrameDecoder::new();
    let mut received = Vec::new();
    for piece in stream.chunks(1000) {
        decoder.push(piece);
        while let Some(frame) = decoder.next_frame().unwrap() {
            received.push(l.b.open(&frame).unwrap());
        }
    }
    assert_eq!(received, messages);
}

#[test]
fn handshake_and_channel_debug_show_no_secrets() {
    let app = secret(b"app secret");
    let id = identity();
    let hs = Handshake::initiator(&id, &app, PROLOGUE).unwrap();
    assert_eq!(format!("{hs:?}"), r#"Handshake { role: "initiator", finished: false, failed: false }"#);
    let l = linked();
    assert!(format!("{:?}", l.a).starts_with("SecureChannel { remote: DeviceKey("));
}

#[test]
fn error_messages_are_readable() {
    assert_eq!(SecurityError::Decrypt.to_string(), "message failed to decrypt or authenticate");
    assert_eq!(
        SecurityError::TooLarge { len: 70_000, max: MAX_PLAINTEXT }.to_string(),
        "message of 70000 bytes exceeds the maximum of 65519 bytes"
    );
    assert_eq!(SecurityError::WrongState("x").to_string(), "wrong state: x");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_handshake_messages_are_rejected(index in 0usize..3, msg in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (mut init, mut resp, _real, side) = handshake_up_to(index);
        let mut to = receiver(&mut init, &mut resp, side);
        prop_assert!(matches!(to.incoming(&msg), Err(SecurityError::Handshake(_))));
        prop_assert!(to.is_failed());
    }

    #[test]
    fn random_ciphertexts_are_rejected(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut l = linked();
        prop_assert!(l.b.open(&msg).is_err());
        prop_assert!(l.b.is_failed());
    }

    #[test]
    fn random_conversations_round_trip(
        messages in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..30),
    ) {
        let mut l = linked();
        for (a_to_b, message) in &messages {
            let (from, to) = if *a_to_b { (&mut l.a, &mut l.b) } else { (&mut l.b, &mut l.a) };
            let sealed = from.seal(message).unwrap();
            prop_assert_eq!(sealed.len(), message.len() + TAG_LEN);
            prop_assert_eq!(&to.open(&sealed).unwrap(), message);
        }
    }
}
