//! The stage graph: edges run from a stage to the stages that read its outputs.

use std::collections::BTreeSet;
use std::fmt::Write;

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use crate::error::{Diagnostic, Result};
use crate::pipeline::config::Pipeline;

pub struct Dag {
    graph: DiGraph<usize, ()>,
    /// Stage indices in an order where every stage follows its upstream.
    order: Vec<usize>,
}

impl Dag {
    pub fn new(pipeline: &Pipeline) -> Result<Self> {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..pipeline.stages.len())
            .map(|i| graph.add_node(i))
            .collect();
        for (i, stage) in pipeline.stages.iter().enumerate() {
            let upstream: BTreeSet<usize> = stage
                .references()
                .filter_map(|r| r.upstream())
                .filter_map(|n| pipeline.index_of(n))
                .collect();
            for u in upstream {
                graph.add_edge(nodes[u], nodes[i], ());
            }
        }
        if toposort(&graph, None).is_err() {
            return Err(cycle_error(pipeline, &graph).into());
        }
        let order = file_order_topo(&graph);
        Ok(Self { graph, order })
    }

    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Direct upstream stages of `stage`.
    pub fn upstream(&self, stage: usize) -> Vec<usize> {
        let mut up: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(stage), Direction::Incoming)
            .map(|n| self.graph[n])
            .collect();
        up.sort_unstable();
        up.dedup();
        up
    }

    /// Direct downstream stages of `stage`.
    pub fn downstream(&self, stage: usize) -> Vec<usize> {
        let mut down: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(stage), Direction::Outgoing)
            .map(|n| self.graph[n])
            .collect();
        down.sort_unstable();
        down.dedup();
        down
    }

    /// What `--stage` selects: every stage when none is named, else the named ones and everything
    /// upstream of them, in graph order.
    pub fn selection(&self, selected: &[usize]) -> Vec<usize> {
        if selected.is_empty() {
            self.order().to_vec()
        } else {
            self.with_ancestors(selected)
        }
    }

    /// The selected stages and everything upstream of them, in graph order.
    pub fn with_ancestors(&self, selected: &[usize]) -> Vec<usize> {
        let reversed = Reversed(&self.graph);
        let mut keep = BTreeSet::new();
        for &s in selected {
            let mut dfs = Dfs::new(reversed, NodeIndex::new(s));
            while let Some(n) = dfs.next(reversed) {
                keep.insert(self.graph[n]);
            }
        }
        self.order
            .iter()
            .copied()
            .filter(|i| keep.contains(i))
            .collect()
    }

    pub fn render(&self, pipeline: &Pipeline, format: DagFormat) -> String {
        let mut out = String::new();
        let name = |i: usize| pipeline.stages[i].name.as_str();
        let kind = |i: usize| pipeline.stages[i].kind.spec().name;
        match format {
            DagFormat::Text => {
                for &i in &self.order {
                    let up: Vec<&str> = self.upstream(i).into_iter().map(name).collect();
                    let arrow = if up.is_empty() {
                        String::new()
                    } else {
                        format!("  ← {}", up.join(", "))
                    };
                    let _ = writeln!(out, "{} ({}){arrow}", name(i), kind(i));
                }
            }
            DagFormat::Dot => {
                let _ = writeln!(
                    out,
                    "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box];",
                    pipeline.name
                );
                for &i in &self.order {
                    let _ = writeln!(
                        out,
                        "  \"{}\" [label=\"{}\\n({})\"];",
                        name(i),
                        name(i),
                        kind(i)
                    );
                }
                for e in self.graph.raw_edges() {
                    let _ = writeln!(
                        out,
                        "  \"{}\" -> \"{}\";",
                        name(self.graph[e.source()]),
                        name(self.graph[e.target()])
                    );
                }
                out.push_str("}\n");
            }
            DagFormat::Mermaid => {
                out.push_str("flowchart LR\n");
                let id = |i: usize| format!("s{i}");
                for &i in &self.order {
                    let _ = writeln!(out, "  {}[\"{} ({})\"]", id(i), name(i), kind(i));
                }
                for e in self.graph.raw_edges() {
                    let _ = writeln!(
                        out,
                        "  {} --> {}",
                        id(self.graph[e.source()]),
                        id(self.graph[e.target()])
                    );
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

/// A topological order that keeps the file's order wherever the edges allow it, so plans and
/// logs list stages the way the user wrote them.
fn file_order_topo(graph: &DiGraph<usize, ()>) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut waiting: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = graph
        .node_indices()
        .filter(|n| waiting[n.index()] == 0)
        .map(|n| Reverse(graph[n]))
        .collect();
    let mut order = Vec::with_capacity(waiting.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for down in graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            waiting[down.index()] -= 1;
            if waiting[down.index()] == 0 {
                ready.push(Reverse(graph[down]));
            }
        }
    }
    order
}

/// Names one cycle in the order its edges run: `a → b → c → a`.
fn cycle_error(pipeline: &Pipeline, graph: &DiGraph<usize, ()>) -> Diagnostic {
    let component = tarjan_scc(graph)
        .into_iter()
        .find(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
        .unwrap_or_default();
    let members: BTreeSet<NodeIndex> = component.iter().copied().collect();
    // Walk inside the component from its first stage (in file order) until a stage repeats.
    let start = members
        .iter()
        .copied()
        .min_by_key(|n| graph[*n])
        .unwrap_or(NodeIndex::new(0));
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = graph
            .neighbors_directed(current, Direction::Outgoing)
            .filter(|n| members.contains(n))
            .min_by_key(|n| graph[*n])
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|&n| n == next) {
            path.drain(..pos);
            path.push(next);
            break;
        }
        path.push(next);
        current = next;
    }
    let names: Vec<&str> = path
        .iter()
        .map(|&n| pipeline.stages[graph[n]].name.as_str())
        .collect();
    let first = &pipeline.stages[graph[path[0]]];
    Diagnostic::new(format!("the stages form a cycle: {}", names.join(" → ")))
        .at(pipeline.location(first))
        .help("a stage cannot read, directly or through others, its own output; remove one of these references")
}
