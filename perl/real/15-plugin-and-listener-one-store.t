# One store for the plugin and a listener (issue 23): the plugin inside `openqa prefork` with two
# workers keeps its store in openQA's own database (`store_url = openqa`), and `incident-gate listen`
# on the same machine, with a state directory of its own, uses that database through `store_url`.
# Both hear every job's end (the plugin from openQA, the listener from openQA's AMQP messages) and
# both would decide; the listener is killed (kill -9) at random points and started again. Counts:
# every incident decided once (one event_id), every review accepted, one review change per request.
use v5.20;
use feature "signatures";
no warnings "experimental::signatures";
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(bin library write_ini unique);
use IGTest::AMQP;
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world);

use constant INCIDENTS => $ENV{IG_INCIDENTS} // 12;

my $w = new_world(base => 15000);
my %key = (openqa_api_key => IGTest::RealOpenQA::API_KEY, openqa_api_secret => IGTest::RealOpenQA::API_SECRET);
my $oq = IGTest::RealOpenQA->start(workers => 2, plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(),
            %{$w->gate_section(undef, %key, store_url => 'openqa', reconcile_interval_s => 2)}}});

my $queue = "igtest-one-store-" . unique();
my $store_url = "postgresql://postgres\@127.0.0.1:5432/$oq->{database}?sslmode=disable";
my $section = $w->gate_section($oq->url, %key, amqp_queue => $queue, amqp_queue_durable => 'false',
    store_url => $store_url, reconcile_interval_s => 2);
my $ini = write_ini({incident_gate => $section});

sub listen_start () {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDOUT, '>>', "$ini.log" or die;
        open STDERR, '>&', \*STDOUT or die;
        $ENV{RUST_LOG} = 'info';    # "listening on queue": when it consumes
        exec bin(), 'listen', '--config', $ini or die "exec: $!";
    }
    return $pid;
}

# until the listener's $n-th start consumes from the queue (the first start declares it: a message
# published before would be dropped)
sub consuming ($n) {
    for (1 .. 300) {
        my @started = grep { /listening on queue/ } split /\n/, (eval { Mojo::File::path("$ini.log")->slurp } // '');
        return 1 if @started >= $n;
        select undef, undef, undef, 0.1;
    }
    return 0;
}

my $listener = listen_start();
ok consuming(1), 'the listener consumes openQA\'s messages' or BAIL_OUT "no listener:\n" . `cat $ini.log`;

my $seed = $ENV{IG_SEED} // $$;
srand $seed;
my ($kills, %requests) = (0);
for my $n (1 .. INCIDENTS) {
    my ($i, $rr) = (15000 + $n, 315000 + $n);
    $w->release_request($rr);
    $requests{$i} = $rr;
    my @jobs = map { IGTest::Scenarios::incident_job($oq, $i, $rr, "t$_") } 1 .. 2;
    $oq->set_done($_, 'passed') for @jobs;
    next if rand() > 0.35;
    select undef, undef, undef, rand() * 0.05;
    kill 'KILL', $listener;
    waitpid $listener, 0;
    $kills++;
    $listener = listen_start();
    ok consuming($kills + 1), "listener started again after kill $kills";
}

my ($decided, $distinct, $accepted, $changes_max) = (0, 0, 0, 0);
for my $i (sort keys %requests) {
    # a delivery a killed listener had taken stays leased by it for 60 s (LEASE_S)
    my @m = $w->await_done($i, 1, 90);
    $decided++ if @m;
    my %ids = map { ($_->{json}{event_id} // '') => 1 } @m;
    $distinct += keys %ids;
    $accepted++ if $w->await_review($requests{$i}, 'accepted', 70);
}
# both have had their chance to decide an incident again
$w->quiet_done((sort keys %requests)[0]);
my $messages = 0;
$messages += $w->done_messages($_) for keys %requests;
my %per_request;
for my $r (@{$w->sim->ua->get("$w->{sim}{obs}/_sim/log")->result->json // []}) {
    next unless $r->{method} eq 'POST' && ($r->{query} // '') =~ /changereviewstate/ && $r->{status} == 200;
    $per_request{$1}++ if $r->{path} =~ m{^/request/(\d+)$};
}
$changes_max = (sort { $b <=> $a } values %per_request)[0] // 0;
# the plugin reads the same store: its metrics route counts the listener's decisions too
my $plugin_decisions = 0;
my $metrics = $oq->ua->get($oq->url . '/admin/influxdb/incident_gate')->result;
for my $line (split /\n/, $metrics->body) {
    $plugin_decisions += $1 if $line =~ /^incident_gate,\S*kind=\S* .*\bdecisions=(\d+)i/;
}
my $store_rows = `psql -h 127.0.0.1 -U postgres -d $oq->{database} -Atc "SELECT count(*) FROM incident_gate.decisions"`;
chomp $store_rows;
diag "plugin (prefork, 2 workers) and listener on openQA's database (seed $seed): ${\INCIDENTS} incidents, "
  . "$kills listener kills; decided $decided; distinct decisions $distinct; reviews accepted $accepted; "
  . "review changes at most $changes_max per request; decisions in the shared store $store_rows "
  . "(the plugin's metrics count $plugin_decisions)";
is $decided, INCIDENTS, 'every incident decided';
is $distinct, INCIDENTS, 'each once (one event_id), by the plugin or the listener';
is $messages, INCIDENTS, 'no incident.done published twice';
is $accepted, INCIDENTS, 'every review accepted';
is $changes_max, 1, 'one review change per request';
is $metrics->code, 200, 'the plugin\'s metrics route answers';
is $plugin_decisions, INCIDENTS, 'the plugin counts every decision in the shared store, the listener\'s too';
is $store_rows, INCIDENTS, 'one decision per incident in openQA\'s database, schema incident_gate';
ok !-e "$section->{state_dir}/incident-gate.sqlite", 'the listener keeps no SQLite store in its state directory';

kill TERM => $listener;
waitpid $listener, 0;
is_deeply [grep { /\bERROR\b/ } split /\n/, Mojo::File::path("$ini.log")->slurp], [], 'the listener logged no errors';
is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
eval { IGTest::AMQP->new->delete_queue($queue) };
done_testing;
