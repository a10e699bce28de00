# The web UI runs prefork: the test app under `prefork` with two workers that share the state
# directory. As in openQA, each job_done event reaches ONE worker: they alternate, so the worker
# that gets the last event has not seen all the others. There is ONE decision, at the last job
# (not at a reconciliation minutes later): one incident.done message, one review change.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../lib";
use IGTest qw(library app_script write_ini start_sim wait_for tempdir unique OPERATOR);
use IGTest::AMQP;
use Mojo::IOLoop::Server;
use Mojo::File;
use Mojo::JSON 'decode_json';
use Mojo::UserAgent;

my $sim = start_sim();
my $amqp = IGTest::AMQP->new;
my $exchange = unique();
$amqp->declare_exchange($exchange);
$amqp->bind_queue($exchange, '#.incident.done');
my $prefix = unique();
my ($incident, $request) = (12346, 300002);
sub ours { grep { $_->{routing_key} eq "$prefix.openqa.incident.done" } @_ }

$sim->create_release_request($request);
my $group = $sim->{groups}{incidents} // $sim->create_group('Maintenance: SLE 15 SP6 Incidents');
my @jobs = $sim->create_incident_jobs(incident => $incident, request => $request, group => $group,
    tests => [qw(qam-minimal mau-extratests mau-bind)]);

my $dir = tempdir(CLEANUP => 1);
my $ini = write_ini({
    global => {base_url => $sim->{openqa}, plugins => 'IncidentGate'},
    incident_gate => {
        library => library(), amqp_url => $ENV{AMQP_URL} // 'amqp://guest:guest@127.0.0.1:5672/%2f',
        amqp_topic_prefix => $prefix, amqp_exchange => $exchange, obs_url => $sim->{obs},
        obs_user => $sim->{obs_user}, obs_password => $sim->{obs_password}, review_policy => 'accept-onpass',
        state_dir => "$dir/state",
    }});
my $port = Mojo::IOLoop::Server->generate_port;
my $url = "http://127.0.0.1:$port";
my $server = fork // die "fork: $!";
if (!$server) {
    $ENV{IG_TEST_OPENQA_INI} = $ini;
    $ENV{IG_TEST_LOG} = "$dir/app.log";
    # -c 1: a worker with an open connection accepts no other, so two clients reach two workers;
    # -k/-i: the clients keep their connections (and so their workers) for the whole test
    exec $^X, (map {"-I$_"} "$FindBin::Bin/lib", "$FindBin::Bin/../lib"), app_script(), 'prefork',
      '-w', 2, '-c', 1, '-k', 300, '-i', 300, '-l', $url, '-P', "$dir/prefork.pid"
      or die "exec: $!";
}
my $stopped;
sub stop_server { kill TERM => $server; waitpid $server, 0; $stopped = 1 }
END { stop_server() if $server && !$stopped }

my $probe = Mojo::UserAgent->new(request_timeout => 2);
ok wait_for(sub { my $tx = $probe->get("$url/ping"); ($tx->res->code // 0) == 200 }, 30), 'prefork server up';
undef $probe;

# two clients on two workers: each keeps its connection, so each stays with its worker
my @clients;
for (1 .. 20) {
    my $ua = Mojo::UserAgent->new(request_timeout => 10, inactivity_timeout => 300);
    my $pid = ($ua->get("$url/pid")->res->json // {})->{pid} or next;
    push @clients, [$ua, $pid] unless grep { $_->[1] == $pid } @clients;
    last if @clients == 2;
}
is scalar @clients, 2, 'two clients talk to two different workers' or die "cannot reach two workers: the rest of this file depends on it\n";

my %sent;
for my $i (0 .. $#jobs) {
    my ($id, $c) = ($jobs[$i], $clients[$i % 2]);
    $sim->set_done($id, 'passed');    # finished in openQA right before its event, as in real life
    my $res = $c->[0]->post("$url/test/emit" => json => [2, 'c', 'openqa_job_done',
        {id => $id, newbuild => undef, reason => undef, result => 'passed'}])->result;
    is $res->code, 200, "job $id done, event handled in worker $c->[1]";
    is $res->json->{pid}, $c->[1], '... by that worker';
    $sent{$c->[1]}++;
}

my @msgs = ours($amqp->get_all(5));
ok @msgs || wait_for(sub { @msgs = ours($amqp->get_all(1)) }, 30), 'incident.done published';
push @msgs, ours($amqp->get_all(8));    # outbox dispatchers poll every few seconds: time for a duplicate
is scalar @msgs, 1, 'exactly one incident.done message';
my $body = decode_json($msgs[0]{body} // '{}');
is $body->{incident}, $incident, 'for the incident';
is $body->{result}, 'passed', 'passed';
ok wait_for(sub { $sim->request($request)->at('review[by_group="qam-openqa"]')->attr('state') eq 'accepted' }, 30),
  'the review is accepted';

my ($decisions, @keys) = (0);
for my $c (@clients) {
    my $status = $c->[0]->get("$url/api/v1/incident_gate/internals" => OPERATOR)->result->json;
    is $status->{pid}, $c->[1], "status of worker $c->[1]";
    is $status->{intake}{accepted}, $sent{$c->[1]}, '... took the events it got';
    cmp_ok $status->{engine}{evaluations}, '>=', 1, '... evaluated the incident';
    $decisions += $status->{engine}{decisions};
    push @keys, map { $_->{key} } grep { $_->{incident} == $incident } @{$status->{engine}{recent_decisions}};
}
is $decisions, 1, 'one worker decided, the other found the decision taken';
is_deeply \@keys, [($msgs[0]{message_id}) x 2], 'both workers see the one decision in the shared state';

stop_server();
my @log = split /\n/, Mojo::File->new("$dir/app.log")->slurp;
my %workers = map { /Worker (\d+) started/ ? ($1 => 1) : () } @log;
is scalar keys %workers, 2, 'the log shows two workers';
is_deeply [grep {/\[(error|fatal)\]/} @log], [], 'and no error';

done_testing;
