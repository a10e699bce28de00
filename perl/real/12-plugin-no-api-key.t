# The plugin in a real openQA web UI configured without an API key: openQA shows scheduled
# products (GET /api/v1/isos/<id>) to operators only, so the plugin cannot tell which incidents a
# product still being scheduled names. What a user sees (README, "When testing is finished"): the
# refusal once in the log and in the operator status with what to configure; the incident does not
# wait for the product.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world);

my $w = new_world(base => 12000);
my $oq = IGTest::RealOpenQA->start(plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
ok((grep { /IncidentGate: libincident_gate/ } $oq->log_lines), 'openQA loaded the plugin');

my ($i, $rr) = (12010, 312010);
$w->release_request($rr);
IGTest::Scenarios::iso_templates($oq, '15-SP11', 'Maintenance: SLE 15 SP11 Incidents',
    'Server-DVD-Incidents' => ['mau-extratests'], 'Desktop-DVD-Incidents' => ['qam-gnome']);
my $server = $oq->post_iso(IGTest::Scenarios::iso_settings($i, $rr, '15-SP11', 'Server-DVD-Incidents'));
my $async = $oq->post_iso(IGTest::Scenarios::iso_settings($i, $rr, '15-SP11', 'Desktop-DVD-Incidents'), async => 1);
my $sp = $async->{scheduled_product_id};
is $oq->scheduled_product($sp)->{status}, 'added', 'the Desktop product waits for the GRU';
is $oq->ua->get($oq->url . "/api/v1/isos/$sp?include_job_ids=1")->result->code, 403,
  'openQA refuses to show it without an API key';
$oq->set_done($server->{ids}[0], 'passed');
my @m = $w->await_done($i);
is scalar @m, 1, 'the incident is decided without waiting for the product (no key: it cannot know)' or exit;
is $m[0]{json}{jobs}{total}, 1, 'on the Server job alone';
$w->quiet_done($i);    # time for a retry loop to show in the log

my $status = $oq->request(GET => '/api/v1/incident_gate/internals')->json;
my @refusals = grep { ($_->{route} // '') =~ m{/api/v1/isos/} } @{$status->{engine}{refusals} // []};
ok @refusals, 'the refusal is in the operator status' or diag explain $status->{engine};
is $refusals[0]{status}, 403, 'with openQA\'s status';
like $refusals[0]{affected}, qr/openqa_api_key/, 'and what to configure';
my %seen;    # openQA's log file and its stdout carry the same lines
my @lines = grep { /IncidentGate.*scheduled product \d+/ && !$seen{$_}++ } $oq->log_lines;
my %per_product;
$per_product{$_}++ for map { /scheduled product (\d+)/ ? $1 : () } @lines;
ok scalar(keys %per_product), 'logged';
ok !(grep { $_ > 1 } values %per_product), 'once per product, not asked again and again' or diag join "\n", @lines;
ok !(grep { /cannot look at scheduled product/ } @lines), 'no retry loop';
done_testing;
