//! Bluetooth LE packets from a hostile device into a link (`BleLink::on_packet`), after a genuine Hello (so the
//! packets reach the data path) or before it: structured packets (Data with any sequence number and payload,
//! Credit, Ping, Pong, Close, another Hello; encoded with `Packet`) and raw bytes, on GATT or on L2CAP (where the
//! bytes are a stream of length-prefixed records), with the time moving. Invariants: no panic; what the link
//! buffers stays under its stated bound (`rx_bound`); frames delivered are whole (at most `MAX_FRAME_LEN`); a
//! failed link stays failed and delivers nothing more.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoaldb::transport::ble::link::{BleLink, Channel, LinkConfig, Role};
use shoaldb::transport::ble::packet::{encode_record, CloseReason, Packet};
use shoaldb::transport::frame::MAX_FRAME_LEN;

mod common;
use common::Input;

const APP: [u8; 4] = [7; 4];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let channel = if input.u8() & 1 == 0 {
        Channel::Gatt { att_mtu: 23 + u16::from(input.u8()) * 2 }
    } else {
        Channel::L2cap { mtu: 20 + u16::from(input.u8()) * 8 }
    };
    let config = LinkConfig { window: 1 + u16::from(input.below(64)) };
    let mut now = 0u64;
    let mut link = BleLink::with_config(Role::Peripheral, channel, [1; 8], APP, config, now);
    if input.u8() & 1 == 1 {
        link.set_att_mtu(23 + u16::from(input.u8()) * 2);
    }
    // Usually a genuine Hello first, from an honest-looking peer link, so that data packets are taken.
    if input.u8() % 4 != 0 {
        let mut peer = BleLink::new(Role::Central, channel, [2; 8], APP, now);
        while let Some(p) = peer.poll_packet() {
            let _ = link.on_packet(&p, now);
        }
    }
    let mut failed = false;
    let mut rounds = 0;
    while !input.is_empty() && rounds < 64 {
        rounds += 1;
        now += u64::from(input.u8()) * 40;
        let packet = match input.below(9) {
            0 => input.bytes(600),
            1 | 2 | 3 => {
                let seq = if input.u8() & 1 == 0 { u16::from(input.below(8)) } else { u16::from(input.u8()) << 8 };
                let payload = input.bytes(520);
                Packet::Data { seq, payload: &payload }.to_vec()
            }
            4 => Packet::Credit { ack: u16::from(input.u8()), grant: u16::from(input.u8()) }.to_vec(),
            5 => Packet::Ping { sent: u16::from(input.u8()) }.to_vec(),
            6 => Packet::Pong.to_vec(),
            7 => Packet::Close { reason: CloseReason::from_code(input.u8()) }.to_vec(),
            _ => Packet::Hello {
                version: input.below(3),
                tag: [input.u8(); 8],
                app_tag: if input.u8() & 1 == 0 { APP } else { [input.u8(); 4] },
                window: u16::from(input.u8()) << input.below(9),
                max_packet: u16::from(input.u8()) << input.below(9),
            }
            .to_vec(),
        };
        // On L2CAP the bytes are a stream of records: usually well-formed, sometimes cut anywhere.
        let bytes = match channel {
            Channel::L2cap { .. } if input.u8() & 3 != 0 => encode_record(&packet).unwrap_or(packet),
            _ => packet,
        };
        let result = link.on_packet(&bytes, now);
        if failed {
            assert!(result.is_err(), "a failed link took a packet");
        }
        failed |= result.is_err();
        assert!(
            link.rx_buffered() <= link.rx_bound(),
            "{} bytes buffered, bound {}",
            link.rx_buffered(),
            link.rx_bound()
        );
        while let Some(frame) = link.poll_frame_in() {
            assert!(!failed, "a failed link delivered a frame");
            assert!(frame.len() <= MAX_FRAME_LEN);
        }
        if link.tick(now).is_err() {
            failed = true;
        }
        // Whatever the link answers (credit, pong, close) is taken by the radio.
        while link.poll_packet().is_some() {
            link.on_sent();
        }
    }
});
