#!/usr/bin/perl
# The benchmark against a real openQA web UI (Debian's `openqa`, scripts/real-openqa): two instances
# side by side in one run, one with the IncidentGate plugin and one without, the same requests
# alternating between them. Prints Markdown for docs/performance.md:
#   - what the plugin adds to `POST /api/v1/jobs/<id>/set_done` (median, p99),
#   - last set_done -> `incident.done` consumed from RabbitMQ (median, p99),
#   - openQA requests the library made per decision,
#   - the resident memory of both web UI processes, after warm-up and after the run.
# Usage (scripts/bench runs it): IG_LIBRARY=... IG_BIN=... perl perl/bench/real-openqa.pl [incidents] [jobs] [workers]
# workers: 0 (default) runs `openqa daemon`, one process; N runs `openqa prefork` with N workers as
# openQA's service does (`-c 1`), where the library's requests are answered by other workers.
use v5.20;
use warnings;
use feature "signatures";
no warnings "experimental::signatures";
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world);
use Mojo::JSON 'decode_json';
use Time::HiRes qw(time);

my ($incidents, $per, $workers) = (shift // 100, shift // 5, shift // 0);
my $w = new_world(base => 50000);
# openQA's own AMQP plugin is left out of both: Debian 12's keeps one broker connection per event
# it published, and thousands of events exhaust the broker's file descriptors
my $with = IGTest::RealOpenQA->start(workers => $workers, plugin => 1, amqp => 0, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
my $without = IGTest::RealOpenQA->start(workers => $workers, amqp => 0, exchange => $w->{exchange}, prefix => "$w->{prefix}-plain");
# IG_LIBRARY_BEFORE: a third instance with another build of the library (an earlier commit), the same
# requests alternating: before and after side by side in one run
my $before_lib = $ENV{IG_LIBRARY_BEFORE};
my $earlier = $before_lib && IGTest::RealOpenQA->start(workers => $workers, plugin => 1, amqp => 0, exchange => $w->{exchange},
    prefix => "$w->{prefix}-before", ini => {incident_gate => {library => $before_lib, %{$w->gate_section(undef)}}});
# each instance's incidents have their own numbers and release requests (in review, so that every
# pass is an accept on IBS, the irreversible action)
my %offset = (with => 0, before => 20000);

sub pct {
    my ($p, $v) = @_;
    my @s = sort { $a <=> $b } @$v;
    return $s[int(($#s) * $p / 100 + 0.5)];
}
sub ms { sprintf '%.2f ms', $_[0] * 1000 }

# the engine's counters are for operators (the Demo user of the fake login is one)
sub status ($oq) { $oq->api(GET => '/api/v1/incident_gate/internals')->{engine} // {} }

sub jobs ($oq, $i) {
    $w->release_request(400000 + $i);
    my $g = IGTest::Scenarios::incidents_group($oq);
    map {
        $oq->create_job(TEST => "t$_", BUILD => ":$i:pkg", INCIDENT_ID => $i, RRID => "SUSE:Maintenance:$i:" . (400000 + $i),
            _GROUP_ID => $g)
    } 1 .. $per;
}

# resident memory of the web UI: the process, and its prefork workers if any (MiB)
sub rss ($oq) {
    my $total = 0;
    for my $pid ($oq->{pid}, $oq->workers) {
        open my $fh, '<', "/proc/$pid/status" or next;
        my ($kb) = join('', <$fh>) =~ /^VmRSS:\s+(\d+)/m;
        $total += ($kb // 0) / 1024;
    }
    return $total;
}

sub timed_done ($oq, $id) {
    my $t0 = time;
    $oq->set_done($id, 'passed');
    return time - $t0;
}

# warm the instances (database caches, the library's engine start in the plugin's worker)
for my $oq (grep {$_} $with, $without, $earlier) { timed_done($oq, $_) for jobs($oq, 49999) }
$w->await_done(49999, 1, 30) or die "no decision during warm-up\n";
my %status_before = (with => status($with), $earlier ? (before => status($earlier)) : ());
my %rss_before = (with => rss($with), without => rss($without));

# the last job: wait for the incident's decision on the broker, polling without pause
sub await_decision ($i, $t0) {
    my $deadline = $t0 + 30;
    while (time < $deadline) {
        my $m = $w->{amqp}->get(1, 0) or next;
        my $j = eval { decode_json($m->{body}) } // {};
        return time - $t0 if ($j->{incident} // 0) == $i && $m->{routing_key} =~ /incident\.done$/;
    }
    die "no incident.done for $i within 30 s\n";
}

my (@cost_with, @cost_without, %latency);
my %plugged = (with => $with, $earlier ? (before => $earlier) : ());
for my $k (1 .. $incidents) {
    my $i = 50000 + $k;
    my %jobs = map { ($_ => [jobs($plugged{$_}, $i + $offset{$_})]) } keys %plugged;
    my @b = jobs($without, $i);
    for my $n (0 .. $#b) {
        push @cost_without, timed_done($without, $b[$n]);
        for my $which (sort keys %plugged) {
            my $t0 = time;
            my $cost = timed_done($plugged{$which}, $jobs{$which}[$n]);
            push @cost_with, $cost if $which eq 'with';
            push @{$latency{$which}}, await_decision($i + $offset{$which}, $t0) if $n == $#b;
        }
    }
}
# the IBS reports (and, after issue 20, their checks against openQA) go on after incident.done
for my $which (sort keys %plugged) {
    my $last = 400000 + 50000 + $incidents + $offset{$which};
    $w->await_review($last, 'accepted', 60) or die "$which: the last review was not accepted\n";
}
sleep 2;
my %status_after = map { ($_ => status($plugged{$_})) } keys %plugged;
my %rss_after = (with => rss($with), without => rss($without));
sub delta ($which, $what) { ($status_after{$which}{$what} // 0) - ($status_before{$which}{$what} // 0) }
my @latency = @{$latency{with}};
my $decisions = delta(with => 'decisions');
my $requests = delta(with => 'openqa_requests');

my ($mw, $mo) = (pct(50, \@cost_with), pct(50, \@cost_without));
say '## Against a real openQA web UI (Debian 12 `openqa`, ',
  ($workers ? "`openqa prefork` with $workers workers" : 'one `openqa daemon`'), " each)\n";
say "$incidents incidents x $per jobs; each job's `set_done` alternates between the instance with the plugin and";
say "the one without. Times are the client's, on loopback.\n";
say '| measure | median | p99 |';
say '| --- | --- | --- |';
say '| `set_done` without the plugin | ', ms($mo), ' | ', ms(pct(99, \@cost_without)), ' |';
say '| `set_done` with the plugin | ', ms($mw), ' | ', ms(pct(99, \@cost_with)), ' |';
say '| plugin cost on `set_done` | ', sprintf('%+.1f %%', 100 * ($mw - $mo) / $mo), ' | ',
  sprintf('%+.1f %%', 100 * (pct(99, \@cost_with) - pct(99, \@cost_without)) / pct(99, \@cost_without)), ' |';
say '| last `set_done` sent -> `incident.done` consumed | ', ms(pct(50, \@latency)), ' | ', ms(pct(99, \@latency)), ' |';
say '';
say "openQA requests by the library: $requests for $decisions decisions (", sprintf('%.2f', $requests / ($decisions || 1)),
  ' per decision, ', delta(with => 'rechecks'), ' checks right before an accept).';
if ($earlier) {
    say '';
    say "Side by side in the same run, the library of `IG_LIBRARY_BEFORE` ($before_lib):\n";
    say '| library | last `set_done` -> `incident.done` median | p99 | openQA requests per decision |';
    say '| --- | --- | --- | --- |';
    for my $which (qw(before with)) {
        say sprintf('| %s | %s | %s | %.2f |', $which eq 'with' ? 'this build' : 'before', ms(pct(50, $latency{$which})),
            ms(pct(99, $latency{$which})), delta($which, 'openqa_requests') / (delta($which, 'decisions') || 1));
    }
}
say '';
say '| resident memory of the web UI', ($workers ? ' (manager and workers)' : ' process'), ' | after warm-up | after the run |';
say '| --- | --- | --- |';
say sprintf('| %s | %.0f MiB | %.0f MiB |', $_->[0], $rss_before{$_->[1]}, $rss_after{$_->[1]})
  for ['with the plugin', 'with'], ['without the plugin', 'without'];
