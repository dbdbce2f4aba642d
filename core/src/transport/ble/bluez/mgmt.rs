//! The kernel's Bluetooth management API (`HCI_CHANNEL_CONTROL`), for an advertisement with a scan response.

use super::SERVICE_UUID_U128;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const AF_BLUETOOTH: libc::c_int = 31;
const BTPROTO_HCI: libc::c_int = 1;
const HCI_DEV_NONE: u16 = 0xffff;
const HCI_CHANNEL_CONTROL: u16 = 3;
const EV_CMD_COMPLETE: u16 = 0x0001;
const EV_CMD_STATUS: u16 = 0x0002;
const OP_READ_ADV_FEATURES: u16 = 0x003d;
const OP_ADD_ADVERTISING: u16 = 0x003e;
const OP_REMOVE_ADVERTISING: u16 = 0x003f;
const FLAG_CONNECTABLE: u32 = 1 << 0;
const FLAG_DISCOVERABLE: u32 = 1 << 1;
/// AD types: complete list of 128-bit service UUIDs; service data with a 128-bit UUID.
const AD_UUID128_ALL: u8 = 0x07;
const AD_SERVICE_DATA128: u8 = 0x21;

#[repr(C)]
struct SockaddrHci {
    family: libc::sa_family_t,
    dev: u16,
    channel: u16,
}

struct Mgmt {
    socket: std::fs::File,
}

impl Mgmt {
    fn open() -> io::Result<Mgmt> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
        let fd = unsafe { libc::socket(AF_BLUETOOTH, libc::SOCK_RAW | libc::SOCK_CLOEXEC, BTPROTO_HCI) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr =
            SockaddrHci { family: AF_BLUETOOTH as libc::sa_family_t, dev: HCI_DEV_NONE, channel: HCI_CHANNEL_CONTROL };
        // SAFETY: `addr` is a valid sockaddr_hci of the given size, alive during the call.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                std::mem::size_of::<SockaddrHci>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: `tv` is a valid timeval of the given size, alive during the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast::<libc::c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mgmt { socket: std::fs::File::from(fd) })
    }

    /// Sends a command for controller `index` and returns its reply's parameters.
    fn command(&mut self, index: u16, opcode: u16, params: &[u8]) -> io::Result<Vec<u8>> {
        let len = u16::try_from(params.len()).map_err(|_| io::Error::other("parameters too long"))?;
        let mut msg = Vec::with_capacity(6 + params.len());
        msg.extend_from_slice(&opcode.to_le_bytes());
        msg.extend_from_slice(&index.to_le_bytes());
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(params);
        self.socket.write_all(&msg)?;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            let n = match self.socket.read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            let Some(ev) = buf.get(..n) else { continue };
            if ev.len() < 9 {
                continue;
            }
            let code = u16::from_le_bytes([ev[0], ev[1]]);
            let ev_index = u16::from_le_bytes([ev[2], ev[3]]);
            let op = u16::from_le_bytes([ev[6], ev[7]]);
            let status = ev[8];
            if ev_index != index || op != opcode || !matches!(code, EV_CMD_COMPLETE | EV_CMD_STATUS) {
                continue;
            }
            if status != 0 {
                return Err(io::Error::other(format!("mgmt command {opcode:#06x} failed: status {status:#04x}")));
            }
            if code == EV_CMD_COMPLETE {
                return Ok(ev.get(9..).unwrap_or_default().to_vec());
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("no reply to mgmt command {opcode:#06x}")))
    }
}

/// Advertises the Shoal service on controller `index`, connectable: the service UUID in the advertising data,
/// `service_data` (if any) in the scan response. Returns the advertising instance.
pub(super) fn advertise(index: u16, service_data: &[u8]) -> io::Result<u8> {
    let mut m = Mgmt::open()?;
    let features = m.command(index, OP_READ_ADV_FEATURES, &[])?;
    let (Some(&max_scan_rsp), Some(&max_instances)) = (features.get(5), features.get(6)) else {
        return Err(io::Error::other("short reply to Read Advertising Features"));
    };
    if max_instances == 0 {
        return Err(io::Error::other("the controller has no advertising instances"));
    }
    // The last instance: bluetoothd hands out its D-Bus advertisements from 1 up.
    let instance = max_instances;
    let uuid = SERVICE_UUID_U128.to_le_bytes();
    let mut adv = vec![17, AD_UUID128_ALL];
    adv.extend_from_slice(&uuid);
    let mut rsp = Vec::new();
    if !service_data.is_empty() && 2 + 16 + service_data.len() <= usize::from(max_scan_rsp) {
        rsp.push(u8::try_from(1 + 16 + service_data.len()).unwrap_or(u8::MAX));
        rsp.push(AD_SERVICE_DATA128);
        rsp.extend_from_slice(&uuid);
        rsp.extend_from_slice(service_data);
    }
    let mut params = vec![instance];
    params.extend_from_slice(&(FLAG_CONNECTABLE | FLAG_DISCOVERABLE).to_le_bytes());
    params.extend_from_slice(&0u16.to_le_bytes()); // duration: default
    params.extend_from_slice(&0u16.to_le_bytes()); // timeout: none
    params.push(u8::try_from(adv.len()).unwrap_or(u8::MAX));
    params.push(u8::try_from(rsp.len()).unwrap_or(u8::MAX));
    params.extend_from_slice(&adv);
    params.extend_from_slice(&rsp);
    m.command(index, OP_ADD_ADVERTISING, &params)?;
    Ok(instance)
}

/// Withdraws advertising instance `instance` of controller `index`.
pub(super) fn remove_advertising(index: u16, instance: u8) -> io::Result<()> {
    Mgmt::open()?.command(index, OP_REMOVE_ADVERTISING, &[instance]).map(|_| ())
}
