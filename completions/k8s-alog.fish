# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_k8s_alog_global_optspecs
    string join \n log-level= h/help V/version
end

function __fish_k8s_alog_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_k8s_alog_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_k8s_alog_using_subcommand
    set -l cmd (__fish_k8s_alog_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "record" -d 'Write one JSON object per access-log record (HTTP exchange, connection, statistics)'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "top" -d 'Live dashboard: service topology, request rates, latency, errors, access-log tail'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "push" -d 'Stream access logs to Apache SkyWalking OAP (its eBPF access-log protocol)'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "doctor" -d 'What this node can do and why: kernel, BTF, program types, runtime, kubelet, API'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "generate" -d 'Write shell completions and man pages generated from this CLI (packaging)'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "resolve" -d 'Resolve host:port as the OAP client does (/etc/hosts, then DNS), without libc'
complete -c k8s-alog -n "__fish_k8s_alog_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -s o -l out -d 'Output file (JSON Lines, created with mode 0600); `-` for stdout' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l duration -d 'Stop after this many seconds (default: until SIGINT or SIGTERM)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l stats-interval -d 'Seconds between capture-statistics records (0: only at exit)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l capture-bytes -d 'Payload bytes copied per socket call for protocol parsing (max 8192)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l ring-mb -d 'Ring-buffer size in MiB (a power of two)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l pid -d 'Only these processes (repeatable)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l cgroup -d 'Only these cgroup v2 ids (repeatable; the inode number of the cgroup directory)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l port -d 'Only connections with this port at either end (repeatable)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l max-connections -d 'Most connections tracked at once; beyond it the least active are written out and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l max-parser-memory -d 'Most memory, in MiB, the protocol parsers of all connections may hold together; beyond it the parsers holding the most start over (their exchanges in flight are written out incomplete, note memory_budget) and `parsers_shed_memory` counts it' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l hooks -d 'Kernel hooks for socket data: auto (the cheapest this kernel has and accepts, per hook), or one rung for all: tracepoint, fentry, kprobe, syscall' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l host-root -d 'Root of the host\'s filesystem (when running in a container with it mounted)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l cri-socket -d 'CRI socket of the container runtime (repeatable; default: probe containerd\'s and CRI-O\'s)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l containerd-state -d 'containerd\'s task-bundle directory for the k8s.io namespace' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l kubelet-pods-dir -d 'The kubelet\'s pod log directory (`<namespace>_<pod>_<uid>/<container>/`)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l kubeconfig -d 'kubeconfig for the optional Kubernetes API (in-cluster credentials are used when present)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l api-server -d 'Kubernetes API server URL (overrides the kubeconfig\'s)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l cluster -d 'Cluster name: services are written `cluster::svc.ns`' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l node-name -d 'This node\'s name (default: the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap -d 'OAP gRPC address(es), host:port (repeatable or comma-separated; tried in turn)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-ca -d 'CA certificate (PEM) to verify the OAP: turns TLS on (server name = the host in --oap)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-cert -d 'Client certificate (PEM), for an OAP that asks for one (with --oap-key)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-key -d 'Client private key (PEM)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-token -d 'Token sent as the `authentication` metadata (the OAP\'s `authentication` setting)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-batch-size -d 'Records per batch (one gRPC stream each; at most 100000)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-batch-period -d 'Seconds between batches at most' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-spool-dir -d 'Directory of the spool that keeps batches while the OAP is unreachable' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-spool-max -d 'Largest spool size (K, M, G suffixes); beyond it batches are dropped and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-node-name -d 'Node name sent to the OAP (default: --node-name, else the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-cluster -d 'Cluster name sent to the OAP (default: --cluster)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-exclude-namespace -d 'Namespaces not reported (repeatable or comma-separated); also sent as the policy' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-backoff-max -d 'Longest wait between reconnection attempts, seconds (the backoff doubles up to it)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-flush-timeout -d 'Seconds allowed at exit to deliver what is left (the rest stays spooled)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l oap-log-interval -d 'Seconds between delivery progress lines on stderr (0: none)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l keep-query -d 'Keep query strings in paths (dropped by default: they often carry secrets)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -l no-k8s -d 'No Kubernetes attribution: container ids only'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand record" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l from -d 'Replay a recording instead of capturing live' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l speed -d 'Replay speed: 1 as recorded, 10 ten times faster, 0 all at once' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l window -d 'Time window of rates and percentiles at start (10s, 1m, 5m; `w` switches)' -r -f -a "10s\t''
1m\t''
5m\t''"
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l tick -d 'Seconds between screen refreshes' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l queue -d 'Records queued between capture and screen; beyond it they are dropped and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l log-file -d 'Where log messages go while the dashboard runs (default: discarded)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l capture-bytes -d 'Payload bytes copied per socket call for protocol parsing (max 8192)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l ring-mb -d 'Ring-buffer size in MiB (a power of two)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l pid -d 'Only these processes (repeatable)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l cgroup -d 'Only these cgroup v2 ids (repeatable; the inode number of the cgroup directory)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l port -d 'Only connections with this port at either end (repeatable)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l max-connections -d 'Most connections tracked at once; beyond it the least active are written out and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l max-parser-memory -d 'Most memory, in MiB, the protocol parsers of all connections may hold together; beyond it the parsers holding the most start over (their exchanges in flight are written out incomplete, note memory_budget) and `parsers_shed_memory` counts it' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l hooks -d 'Kernel hooks for socket data: auto (the cheapest this kernel has and accepts, per hook), or one rung for all: tracepoint, fentry, kprobe, syscall' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l host-root -d 'Root of the host\'s filesystem (when running in a container with it mounted)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l cri-socket -d 'CRI socket of the container runtime (repeatable; default: probe containerd\'s and CRI-O\'s)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l containerd-state -d 'containerd\'s task-bundle directory for the k8s.io namespace' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l kubelet-pods-dir -d 'The kubelet\'s pod log directory (`<namespace>_<pod>_<uid>/<container>/`)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l kubeconfig -d 'kubeconfig for the optional Kubernetes API (in-cluster credentials are used when present)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l api-server -d 'Kubernetes API server URL (overrides the kubeconfig\'s)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l cluster -d 'Cluster name: services are written `cluster::svc.ns`' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l node-name -d 'This node\'s name (default: the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap -d 'OAP gRPC address(es), host:port (repeatable or comma-separated; tried in turn)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-ca -d 'CA certificate (PEM) to verify the OAP: turns TLS on (server name = the host in --oap)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-cert -d 'Client certificate (PEM), for an OAP that asks for one (with --oap-key)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-key -d 'Client private key (PEM)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-token -d 'Token sent as the `authentication` metadata (the OAP\'s `authentication` setting)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-batch-size -d 'Records per batch (one gRPC stream each; at most 100000)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-batch-period -d 'Seconds between batches at most' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-spool-dir -d 'Directory of the spool that keeps batches while the OAP is unreachable' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-spool-max -d 'Largest spool size (K, M, G suffixes); beyond it batches are dropped and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-node-name -d 'Node name sent to the OAP (default: --node-name, else the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-cluster -d 'Cluster name sent to the OAP (default: --cluster)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-exclude-namespace -d 'Namespaces not reported (repeatable or comma-separated); also sent as the policy' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-backoff-max -d 'Longest wait between reconnection attempts, seconds (the backoff doubles up to it)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-flush-timeout -d 'Seconds allowed at exit to deliver what is left (the rest stays spooled)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l oap-log-interval -d 'Seconds between delivery progress lines on stderr (0: none)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l perf -d 'Print responsiveness figures (input-to-frame, frame times, tick lateness) on exit'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l keep-query -d 'Keep query strings in paths (dropped by default: they often carry secrets)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -l no-k8s -d 'No Kubernetes attribution: container ids only'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand top" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l from -d 'Replay a recording to the OAP instead of capturing live' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l duration -d 'Stop after this many seconds (default: until SIGINT or SIGTERM)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l capture-bytes -d 'Payload bytes copied per socket call for protocol parsing (max 8192)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l ring-mb -d 'Ring-buffer size in MiB (a power of two)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l pid -d 'Only these processes (repeatable)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l cgroup -d 'Only these cgroup v2 ids (repeatable; the inode number of the cgroup directory)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l port -d 'Only connections with this port at either end (repeatable)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l max-connections -d 'Most connections tracked at once; beyond it the least active are written out and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l max-parser-memory -d 'Most memory, in MiB, the protocol parsers of all connections may hold together; beyond it the parsers holding the most start over (their exchanges in flight are written out incomplete, note memory_budget) and `parsers_shed_memory` counts it' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l hooks -d 'Kernel hooks for socket data: auto (the cheapest this kernel has and accepts, per hook), or one rung for all: tracepoint, fentry, kprobe, syscall' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l host-root -d 'Root of the host\'s filesystem (when running in a container with it mounted)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l cri-socket -d 'CRI socket of the container runtime (repeatable; default: probe containerd\'s and CRI-O\'s)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l containerd-state -d 'containerd\'s task-bundle directory for the k8s.io namespace' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l kubelet-pods-dir -d 'The kubelet\'s pod log directory (`<namespace>_<pod>_<uid>/<container>/`)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l kubeconfig -d 'kubeconfig for the optional Kubernetes API (in-cluster credentials are used when present)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l api-server -d 'Kubernetes API server URL (overrides the kubeconfig\'s)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l cluster -d 'Cluster name: services are written `cluster::svc.ns`' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l node-name -d 'This node\'s name (default: the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap -d 'OAP gRPC address(es), host:port (repeatable or comma-separated; tried in turn)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-ca -d 'CA certificate (PEM) to verify the OAP: turns TLS on (server name = the host in --oap)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-cert -d 'Client certificate (PEM), for an OAP that asks for one (with --oap-key)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-key -d 'Client private key (PEM)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-token -d 'Token sent as the `authentication` metadata (the OAP\'s `authentication` setting)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-batch-size -d 'Records per batch (one gRPC stream each; at most 100000)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-batch-period -d 'Seconds between batches at most' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-spool-dir -d 'Directory of the spool that keeps batches while the OAP is unreachable' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-spool-max -d 'Largest spool size (K, M, G suffixes); beyond it batches are dropped and counted' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-node-name -d 'Node name sent to the OAP (default: --node-name, else the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-cluster -d 'Cluster name sent to the OAP (default: --cluster)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-exclude-namespace -d 'Namespaces not reported (repeatable or comma-separated); also sent as the policy' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-backoff-max -d 'Longest wait between reconnection attempts, seconds (the backoff doubles up to it)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-flush-timeout -d 'Seconds allowed at exit to deliver what is left (the rest stays spooled)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l oap-log-interval -d 'Seconds between delivery progress lines on stderr (0: none)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l keep-query -d 'Keep query strings in paths (dropped by default: they often carry secrets)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -l no-k8s -d 'No Kubernetes attribution: container ids only'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand push" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l oap -d 'Also check that these OAP addresses (host:port, repeatable) resolve and accept connections' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l timeout -d 'Seconds each network check (CRI socket, API, OAP) may take' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l hooks -d 'Kernel hooks to check the capture programs with (as `record --hooks`)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l host-root -d 'Root of the host\'s filesystem (when running in a container with it mounted)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l cri-socket -d 'CRI socket of the container runtime (repeatable; default: probe containerd\'s and CRI-O\'s)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l containerd-state -d 'containerd\'s task-bundle directory for the k8s.io namespace' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l kubelet-pods-dir -d 'The kubelet\'s pod log directory (`<namespace>_<pod>_<uid>/<container>/`)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l kubeconfig -d 'kubeconfig for the optional Kubernetes API (in-cluster credentials are used when present)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l api-server -d 'Kubernetes API server URL (overrides the kubeconfig\'s)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l cluster -d 'Cluster name: services are written `cluster::svc.ns`' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l node-name -d 'This node\'s name (default: the host name)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l json -d 'Print the report as JSON (checks, facts, verdict)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -l no-k8s -d 'No Kubernetes attribution: container ids only'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand generate" -l out-dir -d 'Directory that receives completions/ and man/ (the repository root for the committed copies)' -r -F
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand generate" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand generate" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand generate" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand resolve" -l log-level -d 'Log level for messages on stderr (error, warn, info, debug, trace)' -r
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand resolve" -s h -l help -d 'Print help'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand resolve" -s V -l version -d 'Print version'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "record" -d 'Write one JSON object per access-log record (HTTP exchange, connection, statistics)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "top" -d 'Live dashboard: service topology, request rates, latency, errors, access-log tail'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "push" -d 'Stream access logs to Apache SkyWalking OAP (its eBPF access-log protocol)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "doctor" -d 'What this node can do and why: kernel, BTF, program types, runtime, kubelet, API'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "generate" -d 'Write shell completions and man pages generated from this CLI (packaging)'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "resolve" -d 'Resolve host:port as the OAP client does (/etc/hosts, then DNS), without libc'
complete -c k8s-alog -n "__fish_k8s_alog_using_subcommand help; and not __fish_seen_subcommand_from record top push doctor generate resolve help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
