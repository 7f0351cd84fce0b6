//! `kvctl member list | add | promote | remove` and `kvctl transfer-leader`: change who is in
//! the cluster, one change at a time, through the leader.
//!
//! Exit codes as for writes: 0 done, 1 refused or failed (nothing was changed), 5 the outcome
//! is unknown (the change may or may not have taken effect: run `kvctl member list`).

use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, ClientError};
use crate::protocol::MembersReply;
use crate::types::{MemberAddress, Membership, NodeId};

use super::kvctl::{fail, EXIT_OK};

/// `kvctl member` commands.
#[derive(Clone, Debug, Subcommand)]
pub enum MemberCommand {
    /// Print every member: id, role (voter, learner, outgoing voter while a change is in
    /// progress), peer and client addresses, and which one leads.
    List,
    /// Add a member: a learner first, promoted to voter once it has caught up (unless
    /// --learner). Start the new node first (`keyval --join` does all of this by itself).
    Add(AddArgs),
    /// Promote a learner to voter once it has caught up.
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member (voter or learner; the leader too: it hands over and steps down).
    Remove {
        /// The member's id.
        id: u64,
    },
}

/// `kvctl member add` arguments.
#[derive(Clone, Debug, Args)]
pub struct AddArgs {
    /// The new member's id: never the id of a removed node that may still be running.
    pub id: u64,
    /// Where the new member listens for peers (host:port).
    #[arg(long)]
    pub peer: String,
    /// Where the new member listens for clients (host:port).
    #[arg(long)]
    pub client: String,
    /// Keep it a learner (it receives the log but does not vote).
    #[arg(long)]
    pub learner: bool,
}

/// Runs a `kvctl member` command; returns the exit code.
pub fn run(client: &Client, command: &MemberCommand, json: bool) -> i32 {
    let result = match command {
        MemberCommand::List => client.members(),
        MemberCommand::Add(add) => client.add_member(
            NodeId(add.id),
            MemberAddress {
                peer: add.peer.clone(),
                client: add.client.clone(),
            },
            !add.learner,
        ),
        MemberCommand::Promote { id } => client.promote_member(NodeId(*id)),
        MemberCommand::Remove { id } => client.remove_member(NodeId(*id)),
    };
    match result {
        Ok(reply) => {
            print_members(&reply, json);
            EXIT_OK
        }
        Err(error) => fail_change(&error, json),
    }
}

/// Runs `kvctl transfer-leader ID`; returns the exit code.
pub fn transfer_leader(client: &Client, id: u64, json: bool) -> i32 {
    match client.transfer_leader(NodeId(id)) {
        Ok(leader) => {
            if json {
                println!("{}", json!({ "ok": true, "leader": leader.0 }));
            } else {
                println!("OK: {leader} leads");
            }
            EXIT_OK
        }
        Err(error) => fail_change(&error, json),
    }
}

/// Prints an error; an unknown outcome gets a hint on how to learn it.
fn fail_change(error: &ClientError, json: bool) -> i32 {
    let code = fail(error, json);
    if error.is_indeterminate() && !json {
        eprintln!("kvctl: the change may or may not have taken effect; see `kvctl member list`");
    }
    code
}

/// A member's role in `membership`.
pub fn role(membership: &Membership, id: NodeId) -> &'static str {
    let incoming = membership.voters.contains(&id);
    let outgoing = membership.voters_outgoing.contains(&id);
    match (incoming, outgoing) {
        (true, true) => "voter",
        (true, false) if membership.is_joint() => "incoming voter",
        (true, false) => "voter",
        (false, true) => "outgoing voter",
        (false, false) => "learner",
    }
}

fn print_members(reply: &MembersReply, json: bool) {
    let membership = &reply.membership;
    let address = |id: NodeId| membership.addresses.get(&id).cloned().unwrap_or_default();
    if json {
        let members: Vec<_> = membership
            .members()
            .into_iter()
            .map(|id| {
                let address = address(id);
                json!({
                    "id": id.0,
                    "role": role(membership, id),
                    "peer": address.peer,
                    "client": address.client,
                    "leader": reply.leader == Some(id),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "leader": reply.leader.map(|leader| leader.0),
                "joint": membership.is_joint(),
                "members": members,
            })
        );
        return;
    }
    println!(
        "{:>4}  {:<15} {:<22} {:<22} LEADER",
        "ID", "ROLE", "PEER", "CLIENT"
    );
    for id in membership.members() {
        let address = address(id);
        let dash = |text: String| if text.is_empty() { "-".into() } else { text };
        println!(
            "{:>4}  {:<15} {:<22} {:<22} {}",
            id.0,
            role(membership, id),
            dash(address.peer),
            dash(address.client),
            if reply.leader == Some(id) { "*" } else { "" }
        );
    }
    if membership.is_joint() {
        println!("(a membership change is in progress: joint configuration)");
    }
}
