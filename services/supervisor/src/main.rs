//! Umbra's supervisor: the first task. It reads the boot manifest (each boot module's command
//! line), starts the services that run in this scenario, hands each its capabilities, answers
//! `proto::supervisor` requests, and restarts a service that faults (restart limit, doubling
//! backoff, a give-up report), bumping its generation each time.
//!
//! Capabilities a service starts with: its own endpoint (receive) and the supervisor's
//! endpoint (send, badged with the service) in the fixed slots `userlib::wiring::OWN_ENDPOINT`
//! and `SUPERVISOR`, then one capability per `needs=` name (an endpoint; `boot` gives a
//! read-only copy of the boot capability, which reads the boot modules and the kernel command
//! line; `spawn` a copy of the spawn capability, for a service that runs tasks of its own; `vmx`
//! the VMX capability; `trace-ring` the capability that reads the exit trace ring). Where each name landed is the service's wiring, which it asks for at start
//! (`Request::Wiring`, `userlib::wiring`): no service counts on the manifest's order. Start
//! argument: the service's generation.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

use abi::cap::slot;
use abi::ipc::{FaultNotice, FAULT_EXIT, FAULT_LABEL, FAULT_PANIC, MAX_PAYLOAD};
use abi::{CapSlot, Rights};
use core::fmt::Write;
use heapless::{String, Vec};
use userlib::kept::{KeepError, KeptCaps};
use userlib::manifest::{self, ManifestEntry};
use userlib::proto::supervisor::{
    Request, Response, ServiceInfo, ServiceName, ServiceState, Supervisor, SupervisorError, Wire,
    MAX_SERVICES, MAX_WIRES, VERSION,
};
use userlib::proto::{ProtoError, Protocol};
use userlib::server::serve_one;
use userlib::sys;
use userlib::wiring;

userlib::entry!(supervisor_main);

/// Priority of the services (the supervisor runs above them).
const SERVICE_PRIORITY: u64 = 10;
/// Badge bits: fault notices, and clients, carry the service index in the low bits.
const FAULT_BADGE: u64 = 1 << 32;
const CLIENT_BADGE: u64 = 1 << 33;

struct Service {
    entry: ManifestEntry,
    module: u64,
    /// The service's endpoint, every right (kept here across restarts).
    ep: CapSlot,
    task: Option<CapSlot>,
    generation: u32,
    state: ServiceState,
    restarts: u32,
    /// Where the running task's `needs=` capabilities are (`Request::Wiring`).
    wiring: Vec<Wire, MAX_WIRES>,
}

struct Registry {
    ep: CapSlot,
    scenario: String<32>,
    services: Vec<Service, MAX_SERVICES>,
    /// A capability granted with the last reply, deleted after it went out.
    granted: Option<CapSlot>,
    /// What services keep across their restarts (`Request::Keep`).
    kept: KeptCaps,
}

fn supervisor_main(_arg: u64) {
    let mut sup = match setup() {
        Ok(s) => s,
        Err(why) => {
            userlib::println!("supervisor: cannot start: {why}");
            sys::machine_exit(slot::MACHINE, abi::ExitCode::Failure as u64);
            return;
        }
    };
    for i in 0..sup.services.len() {
        if let Err(e) = sup.start(i) {
            let name = sup.services[i].entry.name.clone();
            userlib::println!("supervisor: starting {name} failed: {e:?}");
            sup.services[i].state = ServiceState::Stopped;
            let _ = sys::endpoint_close(sup.services[i].ep);
        }
    }
    sup.serve();
}

/// Reads the scenario and the manifest, creates the endpoints.
fn setup() -> Result<Registry, &'static str> {
    let mut line = [0u8; 256];
    let n = sys::kernel_cmdline(slot::BOOT, &mut line).map_err(|_| "no kernel command line")?;
    let cmdline = core::str::from_utf8(&line[..n.min(line.len())]).unwrap_or("");
    let scenario = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("scenario="))
        .unwrap_or("");
    let mut sup = Registry {
        ep: sys::endpoint_create().map_err(|_| "no endpoint")?,
        scenario: String::new(),
        services: Vec::new(),
        granted: None,
        kept: KeptCaps::new(),
    };
    let _ = sup.scenario.push_str(&scenario[..scenario.len().min(32)]);
    let mut buf = [0u8; abi::MODULE_CMDLINE_MAX];
    let count = sys::module_info(slot::BOOT, 0, &mut buf)
        .map_err(|_| "no boot modules")?
        .count;
    for module in 1..count {
        let info = sys::module_info(slot::BOOT, module, &mut buf).map_err(|_| "module info")?;
        let text = core::str::from_utf8(&buf[..info.name_len.min(buf.len())]).unwrap_or("");
        let entry = match manifest::parse(text) {
            Ok(e) => e,
            Err(e) => {
                userlib::println!("supervisor: manifest line {text:?} refused: {e}");
                continue;
            }
        };
        if !entry.runs_in(&sup.scenario) {
            continue;
        }
        let ep = sys::endpoint_create().map_err(|_| "no endpoint")?;
        let service = Service {
            entry,
            module,
            ep,
            task: None,
            generation: 1,
            state: ServiceState::Stopped,
            restarts: 0,
            wiring: Vec::new(),
        };
        if sup.services.push(service).is_err() {
            userlib::println!("supervisor: more than {MAX_SERVICES} services; {text:?} skipped");
        }
    }
    userlib::println!(
        "supervisor: scenario {:?}, {} service(s) in the manifest",
        sup.scenario.as_str(),
        sup.services.len()
    );
    Ok(sup)
}

impl Registry {
    fn find(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.entry.name == name)
    }

    /// Grants a badged copy of `ep` to `task`; returns its slot there.
    fn grant_badged(&self, task: CapSlot, ep: CapSlot, badge: u64) -> Result<CapSlot, abi::Error> {
        let copy = sys::cap_copy(ep, Rights::SEND | Rights::GRANT, badge)?;
        let r = sys::task_grant(task, copy, Rights::all());
        let _ = sys::cap_delete(copy);
        r
    }

    /// Spawns service `i` at its current generation, gives it its capabilities, starts it.
    fn start(&mut self, i: usize) -> Result<(), abi::Error> {
        let fault = sys::cap_copy(self.ep, Rights::SEND, FAULT_BADGE | i as u64)?;
        let s = &self.services[i];
        let task = sys::task_spawn(
            slot::SPAWN,
            s.module,
            u64::from(s.generation),
            SERVICE_PRIORITY,
            fault,
        );
        let _ = sys::cap_delete(fault);
        let task = task?;
        let mut wiring = Vec::new();
        let result = (|| {
            let own = sys::task_grant(task, s.ep, Rights::RECV | Rights::GRANT)?;
            let sup = self.grant_badged(task, self.ep, CLIENT_BADGE | i as u64)?;
            if own != wiring::OWN_ENDPOINT || sup != wiring::SUPERVISOR {
                return Err(abi::Error::InvalidArgument);
            }
            for need in &s.entry.needs {
                let slot = if need == wiring::BOOT {
                    // Reading the boot modules and the command line: read-only, no grant.
                    sys::task_grant(task, slot::BOOT, Rights::READ)?
                } else if need == wiring::VMX {
                    // Creating VMs: the capability itself carries no rights to pass on.
                    sys::task_grant(task, slot::VMX, Rights::READ)?
                } else if need == wiring::TRACE_RING {
                    // Reading the exit trace ring: no rights to pass on.
                    sys::task_grant(task, slot::TRACE, Rights::READ)?
                } else if need == wiring::SPAWN {
                    // Spawning tasks of its own (the fuzzer's hostile child): the capability
                    // itself carries no rights to pass on.
                    sys::task_grant(task, slot::SPAWN, Rights::empty())?
                } else {
                    let ep = if need == "supervisor" {
                        self.ep
                    } else {
                        let j = self.find(need).ok_or(abi::Error::InvalidArgument)?;
                        self.services[j].ep
                    };
                    self.grant_badged(task, ep, CLIENT_BADGE | i as u64)?
                };
                let name = ServiceName::try_from(need.as_str())
                    .map_err(|_| abi::Error::InvalidArgument)?;
                let wire = Wire {
                    name,
                    slot: u32::try_from(slot).map_err(|_| abi::Error::InvalidArgument)?,
                };
                wiring.push(wire).map_err(|_| abi::Error::InvalidArgument)?;
            }
            sys::task_set_pages(task, s.entry.pages)?;
            sys::endpoint_bind(s.ep, task)?;
            sys::task_start(task, u64::from(s.generation))
        })();
        if let Err(e) = result {
            let _ = sys::task_kill(task);
            let _ = sys::cap_delete(task);
            return Err(e);
        }
        let s = &mut self.services[i];
        s.task = Some(task);
        s.state = ServiceState::Running;
        s.wiring = wiring;
        if s.restarts == 0 {
            // A restart has its line already (see `on_notice`).
            userlib::println!(
                "supervisor: started {} (generation {})",
                s.entry.name,
                s.generation
            );
        }
        Ok(())
    }

    fn serve(&mut self) -> ! {
        let mut buf = [0u8; MAX_PAYLOAD];
        let mut request = [0u8; MAX_PAYLOAD];
        let (mut len, mut label) = (0usize, 0u64);
        loop {
            let grant = self.granted;
            let msg = sys::reply_recv(self.ep, &mut buf, len, label, grant);
            if let Some(g) = self.granted.take() {
                let _ = sys::cap_delete(g);
            }
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    userlib::println!("supervisor: receive failed: {e}");
                    (len, label) = (0, 0);
                    continue;
                }
            };
            // Only `Keep` takes a capability; one sent with anything else is dropped after
            // the request (kept, a client could fill this table and stop every restart).
            let mut sent = msg.cap;
            if msg.label == FAULT_LABEL && msg.badge & FAULT_BADGE != 0 {
                if let Some(cap) = sent.take() {
                    let _ = sys::cap_delete(cap);
                }
                if let Some(notice) = FaultNotice::from_bytes(&buf[..msg.len]) {
                    self.on_notice((msg.badge & 0xffff) as usize, notice);
                }
                (len, label) = (0, 0);
                continue;
            }
            let n = msg.len.min(MAX_PAYLOAD);
            request[..n].copy_from_slice(&buf[..n]);
            // Every capability to this endpoint the supervisor hands out is badged: a service's
            // carries CLIENT_BADGE and its index.
            let client = (msg.badge & CLIENT_BADGE != 0).then_some((msg.badge & 0xffff) as usize);
            (label, len) = serve_one::<Supervisor>(msg.label, &request[..n], &mut buf, |req| {
                self.handle(client, req, &mut sent)
            });
            if let Some(cap) = sent {
                let _ = sys::cap_delete(cap);
            }
        }
    }

    fn info(&self, i: usize) -> ServiceInfo {
        let s = &self.services[i];
        let mut name = String::new();
        let _ = name.push_str(&s.entry.name[..s.entry.name.len().min(16)]);
        ServiceInfo {
            name,
            generation: s.generation,
            state: s.state,
            restarts: s.restarts,
        }
    }

    fn handle(
        &mut self,
        client: Option<usize>,
        req: Request,
        sent: &mut Option<CapSlot>,
    ) -> Response {
        let error = |e| Response::Error(ProtoError::Service(e));
        let no_such = Response::Error(ProtoError::Service(SupervisorError::NoSuchService));
        match req {
            Request::Version => Response::Version {
                protocol: Supervisor::PROTOCOL_ID,
                version: VERSION,
            },
            Request::ListServices => {
                let mut list = Vec::new();
                for i in 0..self.services.len() {
                    let _ = list.push(self.info(i));
                }
                Response::Services(list)
            }
            Request::ServiceStatus { name } => match self.find(&name) {
                Some(i) => Response::Status(self.info(i)),
                None => no_such,
            },
            Request::Lookup { name } => {
                let Some(i) = self.find(&name) else {
                    return no_such;
                };
                if self.services[i].state == ServiceState::GaveUp {
                    return Response::Error(ProtoError::Service(SupervisorError::ServiceDown));
                }
                match sys::cap_copy(
                    self.services[i].ep,
                    Rights::SEND | Rights::GRANT,
                    CLIENT_BADGE | client.map_or(0xffff, |c| c as u64),
                ) {
                    Ok(cap) => {
                        self.granted = Some(cap);
                        Response::Granted
                    }
                    Err(_) => Response::Error(ProtoError::Service(SupervisorError::ServiceDown)),
                }
            }
            Request::Restart { name } => {
                let Some(i) = self.find(&name) else {
                    return no_such;
                };
                if let Some(task) = self.services[i].task.take() {
                    let _ = sys::task_kill(task);
                    let _ = sys::cap_delete(task);
                }
                self.services[i].generation += 1;
                userlib::println!(
                    "supervisor: restarting {} on request as generation {}",
                    self.services[i].entry.name,
                    self.services[i].generation
                );
                match self.start(i) {
                    Ok(()) => Response::Restarted {
                        generation: self.services[i].generation,
                    },
                    Err(_) => Response::Error(ProtoError::Service(SupervisorError::ServiceDown)),
                }
            }
            Request::Keep { key } => {
                let (Some(c), Some(cap)) = (client, *sent) else {
                    return error(SupervisorError::KeepFull);
                };
                match self.kept.keep(c as u16, key, cap) {
                    Ok(old) => {
                        *sent = None;
                        if let Some(old) = old {
                            let _ = sys::cap_delete(old);
                        }
                        Response::Kept
                    }
                    Err(KeepError::Full) => error(SupervisorError::KeepFull),
                }
            }
            Request::Fetch { key } => {
                let kept = client.and_then(|c| self.kept.fetch(c as u16, key));
                let Some(cap) = kept else {
                    return error(SupervisorError::NotKept);
                };
                match sys::cap_copy(cap, Rights::all(), 0) {
                    Ok(copy) => {
                        self.granted = Some(copy);
                        Response::Granted
                    }
                    Err(_) => error(SupervisorError::NotKept),
                }
            }
            Request::Forget { key } => match client.and_then(|c| self.kept.forget(c as u16, key)) {
                Some(cap) => {
                    let _ = sys::cap_delete(cap);
                    Response::Forgotten
                }
                None => error(SupervisorError::NotKept),
            },
            Request::Wiring => match client.and_then(|c| self.services.get(c)) {
                Some(s) => Response::Wiring(s.wiring.clone()),
                _ => Response::Error(ProtoError::Service(SupervisorError::NotPermitted)),
            },
            Request::Shutdown { code } => {
                self.summary();
                userlib::println!("supervisor: shutdown requested, exit code {code}");
                let e = sys::machine_exit(slot::MACHINE, u64::from(code));
                userlib::println!("supervisor: machine_exit failed: {e:?}");
                Response::Error(ProtoError::Service(SupervisorError::NotPermitted))
            }
        }
    }

    fn summary(&self) {
        for s in &self.services {
            userlib::println!(
                "supervisor: {} generation {} restarts {} state {:?}",
                s.entry.name,
                s.generation,
                s.restarts,
                s.state
            );
        }
    }

    /// A service faulted, panicked or exited.
    fn on_notice(&mut self, i: usize, n: FaultNotice) {
        let Some(s) = self.services.get_mut(i) else {
            return;
        };
        if let Some(task) = s.task.take() {
            let _ = sys::cap_delete(task);
        }
        if n.generation != u64::from(s.generation) {
            // A notice from an incarnation already replaced (killed on request).
            return;
        }
        let name = s.entry.name.clone();
        // One line per fault (the console is slow; a restart should not wait on it): what
        // happened here, and what the supervisor does about it after.
        let mut what: String<96> = String::new();
        let _ = match n.vector {
            FAULT_EXIT => write!(what, "exited with code {}", n.error_code),
            FAULT_PANIC => write!(what, "panicked at rip {:#x}", n.rip),
            v => write!(
                what,
                "faulted: vector {v} error {:#x} address {:#x} rip {:#x}",
                n.error_code, n.address, n.rip
            ),
        };
        if n.vector == FAULT_EXIT && n.error_code == 0 || s.restarts >= s.entry.restart {
            userlib::println!("supervisor: {name} (generation {}) {what}", s.generation);
        }
        if n.vector == FAULT_EXIT && n.error_code == 0 {
            s.state = ServiceState::Stopped;
            let _ = sys::endpoint_close(s.ep);
            return;
        }
        if s.restarts >= s.entry.restart {
            s.state = ServiceState::GaveUp;
            let _ = sys::endpoint_close(s.ep);
            userlib::println!(
                "supervisor: giving up on {name} after {} restart(s); its callers get ServerGone",
                s.restarts
            );
            for cap in self.kept.forget_all(i as u16) {
                let _ = sys::cap_delete(cap);
            }
            return;
        }
        s.restarts += 1;
        s.generation += 1;
        s.state = ServiceState::Restarting;
        let backoff = s.entry.backoff << (s.restarts - 1).min(10);
        userlib::println!(
            "supervisor: {name} (generation {}) {what}; restarting it as generation {} (restart {} of {}, backoff {backoff} tick(s))",
            s.generation - 1,
            s.generation,
            s.restarts,
            s.entry.restart
        );
        let _ = sys::sleep(backoff);
        if let Err(e) = self.start(i) {
            userlib::println!("supervisor: restart of {name} failed: {e:?}");
            self.services[i].state = ServiceState::GaveUp;
            let _ = sys::endpoint_close(self.services[i].ep);
            for cap in self.kept.forget_all(i as u16) {
                let _ = sys::cap_delete(cap);
            }
        }
    }
}
