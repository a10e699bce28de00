#!/usr/bin/perl
# The live-verdict routes under many clients, in a real openQA web UI (Debian's `openqa`) with the
# IncidentGate plugin: `clients` clients at once over `incidents` incidents, `requests` requests to
# each route (the JSON verdict by incident and by submission, the incident page), one route after
# the other. Prints Markdown for docs/performance.md:
#   - per route: answers other than 200 (by code), p50/p99 as the clients saw them,
#   - the same for two of openQA's own routes (a job's JSON, a job's page), the same way, for
#     comparison: what as many clients cost openQA on a route without any evaluation,
#   - openQA's own `GET /api/v1/jobs/<id>` (one client asking one after the other, in a process
#     of its own) before, during each route's load and after, p50/p99,
#   - evaluations started, shared, reused and turned away (the plugin's counters, daemon only).
# Usage (scripts/bench runs it): IG_LIBRARY=... IG_BIN=... perl perl/bench/verdict-load.pl
#   [clients 100] [incidents 12] [requests 600] [workers 0]
# workers: 0 runs `openqa daemon`, N `openqa prefork` with N workers (`-c 1`, as openQA's service).
use v5.20;
use warnings;
use feature "signatures";
no warnings "experimental::signatures";
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world);
use Mojo::File 'tempfile';
use Mojo::IOLoop;
use Mojo::UserAgent;
use Time::HiRes qw(time);

my ($clients, $incidents, $requests, $workers) = (shift // 100, shift // 12, shift // 600, shift // 0);
my $w = new_world(base => 70000);
my $oq = IGTest::RealOpenQA->start(workers => $workers, plugin => 1, amqp => 0, exchange => $w->{exchange},
    prefix => $w->{prefix}, ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
my $group = IGTest::Scenarios::incidents_group($oq);

# incidents of 5 jobs: some finished, some failed, some still running, as a dashboard sees them
my (@numbers, @job_ids);
for my $k (1 .. $incidents) {
    my $i = 70000 + $k;
    push @numbers, $i;
    my @jobs = map {
        $oq->create_job(TEST => "t$_", BUILD => ":$i:pkg", INCIDENT_ID => $i, RRID => "SUSE:Maintenance:$i:" . (470000 + $i),
            _GROUP_ID => $group)
    } 1 .. 5;
    push @job_ids, @jobs;
    $oq->set_done($_, 'passed') for @jobs[0 .. ($k % 5)];
    $oq->set_done($jobs[4], 'failed') if $k % 3 == 0;
}
my $probe_job = $job_ids[0];

sub pct ($p, $v) {
    my @s = sort { $a <=> $b } @$v;
    return @s ? $s[int(($#s) * $p / 100 + 0.5)] : 0;
}
sub ms ($s) { sprintf '%.0f ms', $s * 1000 }

# openQA's own route, asked one request after the other by a process of its own (so the load's
# event loop never delays it): [end time, latency] of each, until $stop exists (or $count requests).
sub probe ($count, $stop = undef) {
    my $out = tempfile;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $ua = Mojo::UserAgent->new(request_timeout => 120, inactivity_timeout => 120);
        my @t;
        while ($stop ? !-e $stop && getppid() != 1 : @t < $count) {
            my $t0 = time;
            # a request that fails (a timeout under the load) is counted as failed, not the end
            my $res = eval { $ua->get("$oq->{url}/api/v1/jobs/$probe_job")->result };
            push @t, time . ' ' . ($res && $res->code == 200 ? time - $t0 : -1);
        }
        $out->spurt(join "\n", @t);
        POSIX::_exit(0);
    }
    return sub { waitpid $pid, 0; [map { [split / /] } split /\n/, $out->slurp] };
}

sub evaluations () { $oq->api(GET => '/api/v1/incident_gate/internals')->{evaluations} // {} }

# $requests GETs of $path_of->($incident) from $clients clients at once: {codes, times}.
sub load ($path_of) {
    my $ua = Mojo::UserAgent->new(request_timeout => 120, inactivity_timeout => 120, max_connections => $clients);
    my (%codes, @times);
    my $sent = 0;
    my $next;
    $next = sub {
        return if $sent >= $requests;
        my $path = $path_of->($numbers[$sent++ % @numbers]);
        my $t0 = time;
        $ua->get("$oq->{url}$path" => sub ($ua, $tx) {
            push @times, time - $t0;
            $codes{$tx->res->code // 'none'}++;
            return Mojo::IOLoop->stop if @times == $requests;
            $next->();
        });
    };
    $next->() for 1 .. $clients;
    Mojo::IOLoop->start;
    undef $next;
    return {codes => \%codes, times => \@times};
}

# warm up: every incident evaluated once, openQA's caches filled
$oq->ua->get("$oq->{url}/api/v1/incident_gate/incidents/$_")->result for @numbers;
my $before = [map { $_->[1] } @{probe(300)->()}];

my $stop = tempfile->remove;
my $during = probe(0, "$stop");
my $e0 = $workers ? undef : evaluations();
my $e1;
my %job_of = map { ($numbers[$_] => $job_ids[5 * $_ + 1]) } 0 .. $#numbers;
my @routes = (
    ['`GET /api/v1/incident_gate/incidents/<n>`', sub ($i) {"/api/v1/incident_gate/incidents/$i"}],
    ['`GET /api/v1/incident_gate/submissions/ibs:<n>`', sub ($i) {"/api/v1/incident_gate/submissions/ibs:$i"}],
    ['`GET /incident_gate/<n>` (page)', sub ($i) {"/incident_gate/$i"}],
    ["openQA's own `GET /api/v1/jobs/<id>` (comparison)", sub ($i) {"/api/v1/jobs/$job_of{$i}"}],
    ["openQA's own `GET /tests/<id>` (page, comparison)", sub ($i) {"/tests/$job_of{$i}"}],
);
my %result;
my $t0 = time;
for my $r (@routes) {
    my $start = time;
    $result{$r->[0]} = load($r->[1]);
    $result{$r->[0]}{span} = [$start, time];
    $e1 //= evaluations() if !$workers && $r->[0] =~ /page/;
}
my $seconds = time - $t0;
$stop->spurt('stop');
my $while = $during->();
my $after = [map { $_->[1] } @{probe(300)->()}];

say '## Live verdicts under ', $clients, ' clients (real openQA, ', ($workers ? "`openqa prefork` with $workers workers" : 'one `openqa daemon`'), ")\n";
say "$incidents incidents of 5 jobs; $clients clients at once send $requests requests to each route, one route after";
say 'the other (', sprintf('%.0f', $seconds), " s in all), round-robin over the incidents. Times are the clients', on loopback.\n";
say '| route | answers other than 200 | p50 | p99 |';
say '| --- | --- | --- | --- |';
for my $r (@routes) {
    my $x = $result{$r->[0]};
    my %c = %{$x->{codes}};
    my $other = join(', ', map {"$c{$_} × $_"} sort grep { $_ ne '200' } keys %c) || 'none';
    say "| $r->[0] | $other | ", ms(pct(50, $x->{times})), ' | ', ms(pct(99, $x->{times})), ' |';
}
say '';
say "openQA's own `GET /api/v1/jobs/<id>`, one request after the other:\n";
say '| | requests | failed | p50 | p99 | p50 against before |';
say '| --- | --- | --- | --- | --- | --- |';
my $base = pct(50, [grep { $_ >= 0 } @$before]);
my @during = map {
    my ($from, $to) = @{$result{$_->[0]}{span}};
    ["during $_->[0]", [map { $_->[1] } grep { $_->[0] >= $from && $_->[0] <= $to } @$while]]
} @routes;
for my $row (['before', $before], @during, ['after', $after]) {
    my @ok = grep { $_ >= 0 } @{$row->[1]};
    my $p50 = pct(50, \@ok);
    say "| $row->[0] | ", scalar @{$row->[1]}, ' | ', @{$row->[1]} - @ok, ' | ', ms($p50), ' | ', ms(pct(99, \@ok)), ' | ',
      sprintf('%+.0f %%', 100 * ($p50 - $base) / ($base || 1)), ' |';
}
if ($e0 && $e1) {
    say '';
    say 'Evaluations during the load of the three routes (the plugin\'s counters): ', join(', ',
        map { "$_ " . (($e1->{$_} // 0) - ($e0->{$_} // 0)) } qw(started shared reused stale turned_away)), '.';
}
